# Two commands do all setup on a fresh machine with Python 3.11+:
#   make demo   - the whole loop on embedded defaults
#   make test   - the test suite (fast tiers; .ci/run adds the slow ones)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Browser tests drive Debian's Chromium through Playwright (never `playwright install`: no downloads).
CHROMIUM := /usr/bin/chromium

.PHONY: browser setup demo test test-slow test-all lint typecheck protos bench bench-console bench-mqtt clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "edgeloop needs Python 3.11+"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[agent,server,compiler,dev]'
	touch $(STAMP)

browser: $(CHROMIUM)

$(CHROMIUM):
	apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q

test-slow: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -m slow || test $$? -eq 5

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check agent fleet_server compiler tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

protos: $(STAMP)
	$(PY) protos/generate.py

bench: $(STAMP)
	$(PY) bench/sync_heartbeats.py

bench-console: $(STAMP) $(CHROMIUM)
	$(PY) -m bench.console.run --reps 5

bench-mqtt: $(STAMP)
	$(PY) bench/mqtt/run.py --devices 1000,10000 --messages 20000 --reps 5 --json bench/mqtt/results.json

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
