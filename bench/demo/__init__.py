"""Demo loop benchmark (bench/demo/run.py): stage wall times and OTA bytes, deltas vs full files."""
