#!/usr/bin/env bash
# Run Airflow locally for the posterlens DAG: scheduler, dag-processor and api-server
# (127.0.0.1:8080), SQLite metadata and LocalExecutor in ./airflow_home. Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export AIRFLOW_HOME="${AIRFLOW_HOME:-$PWD/airflow_home}"
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True  # local use only: no login
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"  # task processes (default 32)
export HF_HUB_OFFLINE=1
PORT="${AIRFLOW_PORT:-8080}"
mkdir -p "$AIRFLOW_HOME/logs"
"$BIN/airflow" db migrate > "$AIRFLOW_HOME/logs/db-migrate.log"

# Each service runs in its own process group (setsid), so Ctrl-C reaches only this script,
# which then stops every group: TERM first, KILL for whatever is left after a grace period.
pids=()
alive() { for p in "${pids[@]}"; do kill -0 -- "-$p" 2>/dev/null && return 0; done; return 1; }
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping Airflow..."
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for _ in $(seq 30); do alive || break; sleep 1; done
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  echo "stopped."
}
trap stop INT TERM EXIT
start() { local name=$1; shift; setsid "$BIN/airflow" "$@" > "$AIRFLOW_HOME/logs/$name.log" 2>&1 & pids+=($!); }

start scheduler scheduler --skip-serve-logs
start dag-processor dag-processor
start api-server api-server --host 127.0.0.1 --port "$PORT"

cat <<MSG
Airflow is starting (logs in $AIRFLOW_HOME/logs). UI: http://127.0.0.1:$PORT
Trigger the pipeline on the bundled sample (posters are downloaded from the catalogue's
Poster URLs, so point "catalog" at a CSV whose URLs your machine can reach):
  AIRFLOW_HOME=$AIRFLOW_HOME $BIN/airflow dags unpause posterlens_pipeline
  AIRFLOW_HOME=$AIRFLOW_HOME $BIN/airflow dags trigger posterlens_pipeline \\
      --conf '{"catalog": "CATALOG.csv", "images": "runs/airflow/images", "out": "runs/airflow"}'
Press Ctrl-C to stop scheduler, dag-processor and api-server.
MSG
wait -n "${pids[@]}" || true
echo "an Airflow service exited; see $AIRFLOW_HOME/logs"
