"""Model registry: versions with lineage, their compile jobs and their release to the fleet."""
