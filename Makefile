# Every target works on a fresh clone: it makes .venv and installs the project first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser system-packages run test test-fast bench bench-scale bench-history bench-month bench-compaction bench-containers bench-head bench-device lint clean

$(STAMP): pyproject.toml infra/install.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	infra/install.sh $(PY) --with-tests
	touch $(STAMP)

install: $(STAMP)

# The report's browser test renders it in Debian's chromium: installed here when missing and we are root (CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "chromium is missing (apt-get install chromium, as root): the browser tests will skip"; fi; }

# The monitoring tests (tests/metrics) start Debian's prometheus, promtool and prometheus-pushgateway.
system-packages:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus-pushgateway >/dev/null 2>&1 || { \
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends prometheus prometheus-pushgateway; \
	else echo "prometheus or prometheus-pushgateway is missing (apt-get install them, as root): the monitoring tests will skip"; fi; }

run: $(STAMP)
	$(PY) jobs/cam_batch.py --config jobs/configs/demo.yaml
	$(VENV)/bin/camray report --output output --dest output/report

test: $(STAMP) browser system-packages
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not integration"

bench: $(STAMP)
	$(PY) -m camray.bench

bench-scale: $(STAMP)
	$(PY) -m camray.bench.scale

bench-history: $(STAMP)
	$(PY) -m camray.bench.history

bench-month: $(STAMP)
	$(PY) -m camray.bench.month

bench-compaction: $(STAMP)
	$(PY) -m camray.bench.compaction

bench-containers: $(STAMP)
	$(PY) -m camray.bench.containers

# A user's own trained head through the real job on the multi-object scenes, beside ImageNet's
# (docs/localization-multi.md). ARGS: e.g. --head data/kinds_head to reuse a trained head.
bench-head: $(STAMP)
	$(PY) -m camray.evaluation.head_bench $(ARGS)

# GPU figures in one command (docs/device-benchmark.md). No install step: a bare GPU host has the packages but
# no index, so this runs the venv's Python where there is one and python3 otherwise. ARGS=--smoke: on the CPU.
bench-device:
	$(if $(wildcard $(PY)),$(PY),python3) -m camray.bench.device $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check camray jobs tests
	$(VENV)/bin/ruff format --check camray jobs tests
	$(VENV)/bin/lint-imports

clean:
	rm -rf output data .pytest_cache bench-results.json bench-scale-results.json bench-containers-results.json bench-compaction-results.json
