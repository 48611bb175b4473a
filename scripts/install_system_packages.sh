#!/usr/bin/env bash
# Debian packages the tests drive for real: PostgreSQL and Redis (the Celery run: make
# airflow-celery, tests/test_celery.py) and Chromium with its driver (the report and the web
# page in a real browser). Installs them with apt-get only when one is missing and we are root;
# never starts a server (scripts/celery_cluster.py runs its own on 127.0.0.1).
set -euo pipefail
have_postgres() { command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
have() { command -v "$1" >/dev/null; }
if have_postgres && have redis-server && have chromium && have chromedriver; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! have apt-get; then
  echo "install_system_packages.sh: install postgresql redis-server chromium chromium-driver (needs root and apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q postgresql redis-server chromium chromium-driver
