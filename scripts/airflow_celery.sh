#!/usr/bin/env bash
# A distributed posterlens run on this machine: PostgreSQL, Redis, Airflow with CeleryExecutor
# (api-server, scheduler, dag-processor, two Celery workers), all on 127.0.0.1 with their data
# in a temporary folder, then the DAG on the bundled sample with its posters served locally.
# Prints where each shard ran; everything is stopped and removed at the end, or on Ctrl-C.
#   scripts/airflow_celery.sh [--shard-size 80] [--epochs 3] [--kill-worker] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_system_packages.sh
export HF_HUB_OFFLINE=1
exec "${PYTHON:-.venv/bin/python}" scripts/celery_cluster.py "$@"
