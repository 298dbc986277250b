# Two commands do all set-up on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BQ_VENV := .venv-bq
PY := $(VENV)/bin/python
DATA ?= data/sample
STACK_STATE ?= .localstack/demo
STACK := $(PY) -m scripts.localstack --state-dir $(STACK_STATE)

.PHONY: venv demo stream stop status data run test test-unit bench bench-1m bench-stages bench-live bench-connector bench-collector bench-stream bench-sync serve clean template-build template-run

venv: $(VENV)/.installed $(BQ_VENV)/.installed
	@scripts/system_packages.sh

# The JavaScript SDK the collector's tests run (tests/js/package.json, exact versions locked).
JS_DEPS := tests/js/node_modules/.installed
$(JS_DEPS): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund
	@touch $@

$(VENV)/.installed: requirements.txt requirements-dev.txt connector/requirements.txt collector/requirements.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r connector/requirements.txt \
	  -r collector/requirements.txt
	$(PY) -m pip check
	@touch $@

$(BQ_VENV)/.installed: scripts/requirements-bqemulator.txt scripts/install_duckdb_extensions.py
	@test -x $(BQ_VENV)/bin/python || $(PYTHON) -m venv $(BQ_VENV)
	$(BQ_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BQ_VENV)/bin/python -m pip install --quiet -r scripts/requirements-bqemulator.txt
	$(BQ_VENV)/bin/python scripts/install_duckdb_extensions.py
	@touch $@

## demo: set up, start a fresh local stack, generate sample data, run the batch job, show results.
## The emulators keep data in memory: restarting them makes every demo start from empty tables
## (a batch re-run over the same files would add nothing: it merges on each table's key,
## docs/OPERATIONS.md "Re-running the batch job").
## The sample holds campaign sample-campaign with a 10% holdout; the job is given the same 10%,
## and the lift report reads the campaign back from the events table (docs/ENGAGEMENT.md).
## The job computes the traits and audiences of audiences.example.yaml into every document; the
## preview prints each audience's size with the job's own rules over the same files
## (docs/AUDIENCES.md, "Preview"; tests/unit/test_audience_preview.py checks they agree).
demo: venv
	$(PY) -m scripts.demo_connector stop --state-dir $(STACK_STATE)
	$(STACK) stop
	$(STACK) start
	$(PY) -m scripts.generate_data --out $(DATA) --campaign-id=sample-campaign --campaign-holdout-percent=10
	eval "$$($(STACK) env)" && $(PY) -m pipeline.run \
	  --runner=FnApiRunner --project=demo-local \
	  --events='$(DATA)/events-*.ndjson.gz' \
	  --customers=$(DATA)/customers.csv --catalog=$(DATA)/catalog.csv \
	  --holdout_percent=10 --audiences=audiences.example.yaml \
	  --redis_url="$$REDIS_URL" \
	  --temp_location=$(CURDIR)/.localstack/tmp
	eval "$$($(STACK) env)" && $(PY) -m scripts.show --project=demo-local
	@echo; echo "Audiences of audiences.example.yaml in the documents above (python -m pipeline.audiences preview):"
	$(PY) -m pipeline.audiences preview audiences.example.yaml \
	  --events='$(DATA)/events-*.ndjson.gz' \
	  --customers=$(DATA)/customers.csv --catalog=$(DATA)/catalog.csv --holdout_percent=10
	eval "$$($(STACK) env)" && $(PY) -m pipeline.report lift --project=demo-local \
	  --dataset=personalization --campaign=sample-campaign
	eval "$$($(STACK) env)" && $(PY) -m scripts.demo_connector start --state-dir $(STACK_STATE)
	@echo "The local stack and the connector are still running: 'make stop' stops them; '$(STACK) env' prints the stack's environment."

## stream: the real-time path. Starts its own local stack (.localstack/stream), the streaming job
## on the BundleBasedDirectRunner, the tracking collector and the Segment Python client replaying
## the sample through it at RATE events/s; Ctrl-C stops all of it. RATE=10 by default (see
## docs/STREAMING.md for what this runner sustains).
RATE ?= 10
stream: venv
	$(PY) -m scripts.stream --rate $(RATE) --data $(DATA)

## stream-status: exact counts of the running `make stream` job, read from its tables (rows
## written since it started) against what its collector has accepted (pipeline/tally.py).
.PHONY: stream-status
stream-status:
	$(PY) -m scripts.stream --status

## collect: the tracking collector on its own local stack (.localstack/collect), to point a real
## SDK or curl at; prints how (scripts/collect.py). `make stop` stops it.
.PHONY: collect
collect: venv
	$(PY) -m scripts.collect start --state-dir .localstack/collect

stop:
	@if [ -x $(PY) ]; then $(PY) -m scripts.demo_connector stop --state-dir $(STACK_STATE); $(STACK) stop; $(PY) -m scripts.localstack --state-dir .localstack/stream stop; $(PY) -m scripts.collect stop --state-dir .localstack/collect; else echo "nothing to stop (no $(VENV))"; fi

status:
	$(STACK) status

## test: set up, run the whole suite (the suite starts and stops its own emulators). It runs on
## TEST_WORKERS pytest-xdist workers (default 2), each with its own local stack; each test module
## runs whole on one worker, the modules handed out in file order (integration first).
## TEST_WORKERS=0 runs the suite in one process. Timings: docs/PERFORMANCE.md, "The test suite".
TEST_WORKERS ?= 2
test: venv $(JS_DEPS)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test-unit: venv
	$(PY) -m pytest tests/unit

## bench: the batch graph against a plain loop at 100,000 events, without and with the shipped
## audiences.example.yaml (docs/PERFORMANCE.md).
bench: venv
	$(PY) -m bench.throughput --audiences audiences.example.yaml

bench-1m: venv
	$(PY) -m bench.throughput --events 1000000 --repeat 3

bench-stages: venv
	$(PY) -m bench.stages

## bench-live: the streaming composites on a bounded input on the FnApiRunner, against the batch
## graph on the same 100,000 events (docs/PERFORMANCE.md).
bench-live: venv
	$(PY) -m bench.live

## bench-connector: the send-time API at 1,000 requests/s for 20 s over customers it never looked up,
## Redis mode against Firestore-only mode, /healthz as the baseline, in one run (docs/PERFORMANCE.md).
bench-connector: venv
	$(PY) -m bench.connector_load

## bench-collector: the tracking collector: /v1/track at 1,000 requests/s against /healthz, and
## /v1/batch at saturation against the Pub/Sub client alone, every event counted (docs/PERFORMANCE.md).
bench-collector: venv
	$(PY) -m bench.collector_load

bench-stream: venv
	$(PY) -m bench.stream_latency --rates 5,10,20,200 --pipeline_arg=--document_flush_seconds=0

## bench-sync: the sync worker: changes/s to a local Braze receiver at saturation (no rate limit)
## against the receiver's own rate, requests per 1,000 changes, and a rate limit checked at the
## receiver (docs/PERFORMANCE.md).
bench-sync: venv
	$(PY) -m bench.sync_load

## serve: the ESP connector on the running local stack (CONNECTOR_API_KEYS must be set).
serve: venv
	eval "$$($(STACK) env)" && CONNECTOR_PROJECT=demo-local $(PY) -m connector

clean: stop
	rm -rf $(VENV) $(BQ_VENV) .localstack data build *.egg-info

## template-build / template-run: build the Dataflow flex template, launch the streaming job from it.
## Their settings are environment variables (docs/DEPLOY.md); DRY_RUN=1 prints the commands.
template-build:
	templates/build.sh

template-run:
	templates/run.sh
