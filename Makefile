# Two commands do all setup on a fresh machine with Python 3.11+:
#   make demo   - the whole loop on embedded defaults
#   make test   - the test suite (fast tiers; .ci/run adds the slow ones)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Browser tests drive Debian's Chromium through Playwright (never `playwright install`: no downloads).
CHROMIUM := /usr/bin/chromium

.PHONY: browser setup demo demo-quick test test-slow test-all lint typecheck protos bench bench-console bench-mqtt \
        bench-demo bench-fleet bench-fleet-mqtt bench-replicas sim clean

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

# Flags through DEMO_ARGS: --devices N (>= 5), --quick, --full-files, --keep-running, --work DIR, --json
demo: $(STAMP)
	$(PY) scripts/demo.py $(DEMO_ARGS)

demo-quick: $(STAMP)
	$(PY) scripts/demo.py --quick $(DEMO_ARGS)

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q --durations=30

test-slow: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -m slow --durations=15 || test $$? -eq 5

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

bench-demo: $(STAMP)
	$(PY) bench/demo/run.py --reps 3 --json bench/demo/last.json

# One fleet-server process holding 1k/5k/10k mutual-TLS gRPC devices, then a SIGKILL + restart (~30 min)
bench-fleet: $(STAMP)
	$(PY) -m bench.fleet_scale.run --devices 1000,5000,10000 --reps 1,1,3 --ramp-per-s 150 --window-s 60 \
		--json bench/fleet_scale/results.json

# The same over MQTT through a Mosquitto that edgeloop-server mqtt-config set up
bench-fleet-mqtt: $(STAMP)
	$(PY) -m bench.fleet_sim.mqtt_scale --devices 1000,5000,10000 --json bench/fleet_sim/mqtt_results.json

# 1/2/3 server replicas on one PostgreSQL behind a TCP balancer, singleton takeovers after SIGKILL (~10 min)
bench-replicas: $(STAMP)
	$(PY) -m bench.replicas.run --reps 3 --json bench/replicas/results.json

# The fleet simulator against a running server: make sim SIM_ARGS="--server URL --token T --ca CA ..."
sim: $(STAMP)
	$(PY) -m bench.fleet_sim $(SIM_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
