# The two commands: `make run` and `make test`. Everything else here is what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
SAMPLE := gis_data/heshan

.PHONY: run test setup system-deps system-deps-test venv db bench clean-db

## run: install what is missing, start PostGIS, migrate, load the sample once, serve
run: setup
	$(BIN)/geo-service load $(SAMPLE) --if-empty
	$(BIN)/geo-service user demo
	$(BIN)/geo-service serve --host $(HOST) --port $(PORT)

## test: install what is missing, lint (ruff, configured in pyproject.toml), then run the whole suite against a real PostGIS
test: system-deps-test venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: system-deps venv
	$(BIN)/geo-service db start
	$(BIN)/geo-service db migrate

system-deps:
	PYTHON=$(PYTHON) scripts/system-deps.sh

system-deps-test:
	PYTHON=$(PYTHON) scripts/system-deps.sh --test

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

## bench: every benchmark in benchmarks/, one table, figures kept in benchmarks/results/<date>.json
bench: setup
	PYTHON=$(PYTHON) scripts/system-deps.sh --bench
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'  # tipg, the OGC API's peer
	cd benchmarks && ../$(BIN)/python run.py $(BENCH_ARGS)

## clean-db: stop the embedded cluster and delete it (all data in var/ is lost)
clean-db:
	-$(BIN)/geo-service db stop
	rm -rf var
