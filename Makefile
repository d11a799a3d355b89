# Every target works on a fresh clone: it makes .venv and installs the project first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench bench-scale lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) jobs/cam_batch.py --config jobs/configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not integration"

bench: $(STAMP)
	$(PY) -m pipeline.bench

bench-scale: $(STAMP)
	$(PY) -m pipeline.bench.scale

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline jobs tests
	$(VENV)/bin/ruff format --check pipeline jobs tests

clean:
	rm -rf output data .pytest_cache bench-results.json bench-scale-results.json
