#!/usr/bin/env bash
# PostgreSQL and Redis for the Celery run (make airflow-celery, tests/test_celery.py).
# Installs them with apt-get only when one is missing and we are root; never starts them
# (scripts/celery_cluster.py runs its own, on 127.0.0.1, with a temporary data folder).
set -euo pipefail
have_postgres() { command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
have_redis() { command -v redis-server >/dev/null; }
if have_postgres && have_redis; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_servers.sh: PostgreSQL or Redis is missing; install postgresql and redis-server (needs root and apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q postgresql redis-server
