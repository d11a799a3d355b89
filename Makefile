# Every target works on a fresh clone: it makes .venv and installs the project first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench lint clean

$(STAMP): pyproject.toml infra/install.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	infra/install.sh $(PY) --with-tests
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

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline jobs tests
	$(VENV)/bin/ruff format --check pipeline jobs tests

clean:
	rm -rf output data .pytest_cache bench-results.json
