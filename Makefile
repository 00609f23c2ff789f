# The same targets run locally, in pre-commit and in CI (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install check format test test-fast test-faults bench demo

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e '.[dev,demo]'

check:
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

format:
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

test:
	$(VENV)/bin/pytest -q

test-fast:
	$(VENV)/bin/pytest -q -m "not slow and not fault"

test-faults:
	$(VENV)/bin/pytest -q -m "fault or slow"

bench:
	$(PY) -m bench

demo:
	$(VENV)/bin/billnotify demo
