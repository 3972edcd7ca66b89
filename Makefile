# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test test-unit lint typecheck check rules bench bench-smoke bench-scale \
	bench-scale-smoke migrate clean reset-data clients-types

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	@touch $(STAMP)

## Start the service (embedded PostgreSQL unless DATABASE_URL is set).
run: $(STAMP)
	$(BIN)/ingest run

## Load the demo catalogue and a week of activity into the running local service's database
## (or DATABASE_URL's), so that the examples in README.md and docs/ answer as shown.
demo: $(STAMP)
	$(BIN)/ingest demo --activity

## Run the test suite (TEST_DATABASE_URL, else a Docker container, else embedded PostgreSQL).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The tests that need no database (tests/unit): seconds.
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

migrate: $(STAMP)
	$(BIN)/ingest migrate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

## Check the Prometheus alert rules and run their unit tests (promtool: Debian package prometheus).
rules:
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

## Benchmarks against raw PostgreSQL (a few minutes; DATABASE_URL or embedded PostgreSQL).
bench: $(STAMP)
	$(BIN)/python -m bench

## The same sections at toy sizes (about a minute): checks that the benchmark still runs.
bench-smoke: $(STAMP)
	BENCH_SECONDS=2 BENCH_ROUNDS=1 BENCH_RULES=500 BENCH_ROLLUP_EVENTS=30000 $(BIN)/python -m bench

## Cost against the size of history (under 20 minutes): 30 days / 30 M events vs an empty database.
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

## The same at toy sizes (about a minute): checks that the scale benchmark still runs.
bench-scale-smoke: $(STAMP)
	BENCH_SCALE_EVENTS=300000 BENCH_SCALE_SECONDS=2 BENCH_SCALE_ROUNDS=1 \
	BENCH_SCALE_WARMUP_SECONDS=1 $(BIN)/python -m bench.scale

## After a change of the API: write the live /openapi.json to clients/openapi.json and
## regenerate the TypeScript client's types from it (needs Node 20+ and npm).
clients-types: $(STAMP) clients/typescript/node_modules/.package-lock.json
	$(BIN)/python clients/openapi_document.py clients/openapi.json
	cd clients/typescript && npm run --silent types

clients/typescript/node_modules/.package-lock.json: clients/typescript/package-lock.json
	cd clients/typescript && npm ci --no-audit --no-fund

## Build and tool caches and the venv. Local mode's data folder stays: `make reset-data`.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

## Delete .data (the embedded cluster, its database, the generated secrets); stop `make run` first.
reset-data: $(STAMP)
	$(BIN)/ingest reset-local --yes
