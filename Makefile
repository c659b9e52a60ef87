# make run: start the service with ops/dev.toml (embedded PostgreSQL unless DATABASE_URL is set);
# make run PORT=9090 HOST=0.0.0.0 listens elsewhere than the file's server.port and server.host
# make test: the whole suite against a real PostgreSQL (embedded unless TEST_DATABASE_URL is set)
# Every target installs the package with its test and ops extras (the ops extra: what the
# scripts under ops/ import, for make bench and make chaos)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check migrate verify bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,ops]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m service serve --config ops/dev.toml$(if $(HOST), --host $(HOST))$(if $(PORT), --port $(PORT))

migrate: $(STAMP)
	$(BIN)/python -m service migrate --config ops/dev.toml

verify: $(STAMP)
	$(BIN)/python -m service verify --config ops/dev.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The benchmark (ops/bench): 3 runs, 2 workers, the 10 M-event log, a 10-minute soak (about
# half an hour); make bench BENCH_ARGS="--small --soak 0 --profile"; --help lists the flags
bench: $(STAMP)
	$(BIN)/python ops/bench/bench.py $(BENCH_ARGS)

# Fault injection (ops/chaos): every scenario in turn, each printing what it did and what was
# lost; make chaos CHAOS_ARGS="--only crash --kills 5"; ops/chaos/run_all.py --help for more
chaos: $(STAMP)
	$(BIN)/python ops/chaos/run_all.py $(CHAOS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service tests ops
	$(BIN)/ruff format --check service tests ops

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
