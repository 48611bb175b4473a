"""A throwaway distributed Airflow 3 on this machine, and the posterlens DAG run on it.

PostgreSQL (metadata) and Redis (Celery broker) bound to 127.0.0.1 on free ports, Airflow
with CeleryExecutor: api-server (the workers' execution API), scheduler, dag-processor and
two Celery workers with distinct hostnames. Everything lives in one temporary folder;
each process runs in its own process group, and ``Cluster.stop()`` (on exit, Ctrl-C,
SIGTERM or an exception) ends every group and removes the folder.

Used by ``scripts/airflow_celery.sh`` (``make airflow-celery``) and ``tests/test_celery.py``::

    python scripts/celery_cluster.py [--shard-size 80] [--epochs 3] [--kill-worker] [--keep]

Task instances record the worker that ran them: ``worker_hostname`` is Airflow's
``hostname_callable`` here, so the two workers on one machine have different names.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample"
DAG_ID = "posterlens_pipeline"
WORKERS = ("worker1", "worker2")
WORKER_ENV = "POSTERLENS_WORKER"  # the name worker_hostname() reports
MAPPED_TASKS = ("fetch_posters", "embed")
FINISHED = {"success", "failed"}


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` in the cluster: the worker's name, else the host's."""
    return os.environ.get(WORKER_ENV) or socket.getfqdn()


def server_binaries() -> dict[str, str | None]:
    """Where PostgreSQL's and Redis's programs are (Debian keeps PostgreSQL's off PATH)."""
    def find(name: str) -> str | None:
        versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
        return shutil.which(name) or (versions[-1] if versions else None)

    return {"initdb": find("initdb"), "postgres": find("postgres"), "redis-server": shutil.which("redis-server")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Files of ``folder`` over HTTP on 127.0.0.1 (a free port); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def catalog_with_urls(catalog: Path, base_url: str, dest: Path) -> Path:
    """A copy of a MovieGenre.csv whose Poster URLs point at ``base_url/tt<id>.jpg``."""
    import pandas as pd

    rows = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    rows["Poster"] = [f"{base_url}/tt{int(i):07d}.jpg" for i in rows["imdbId"]]
    dest.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(dest, index=False)
    return dest


@dataclass
class Service:
    """A process started in its own group, with the groups its descendants made.

    Airflow runs each task in a process group of its own (so that it can signal the task's
    subprocesses), so stopping or killing a worker means signalling those groups too.
    """

    name: str
    process: subprocess.Popen
    log: Path
    stop_signal: int = signal.SIGTERM
    groups: set[int] = field(default_factory=set)

    def alive(self) -> bool:
        self.process.poll()  # reap the leader: a zombie would still count as a member
        return any(_group_has_members(g) for g in self.groups | {self.process.pid})

    def signal(self, sig: int) -> None:
        self.groups |= {self.process.pid} | {_group_of(p) for p in _descendants(self.process.pid)} - {0}
        for group in self.groups:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.poll()


def _group_has_members(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stat(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _group_of(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[2]) if fields else 0


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(entry.name)
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


@dataclass
class Cluster:
    """PostgreSQL + Redis + Airflow (CeleryExecutor, two workers) in one temporary folder;
    ``postgres_only``: PostgreSQL alone (``database_url`` gives a fresh database on it)."""

    workers: tuple[str, ...] = WORKERS
    heartbeat_timeout: int = 15  # seconds without a heartbeat before a task counts as lost
    retries: int = 2  # task retries: a shard whose worker died runs again on another
    postgres_only: bool = False
    root: Path = field(init=False)
    ports: dict[str, int] = field(init=False, default_factory=dict)
    services: dict[str, Service] = field(init=False, default_factory=dict)
    env: dict[str, str] = field(init=False, default_factory=dict)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "Cluster":
        missing = [name for name, path in server_binaries().items()
                   if path is None and not (self.postgres_only and name == "redis-server")]
        if missing:
            raise FileNotFoundError(f"not installed: {', '.join(missing)} (scripts/install_system_packages.sh installs them)")
        self.root = Path(tempfile.mkdtemp(prefix="posterlens-celery-"))
        self.root.chmod(0o711)  # PostgreSQL runs as its own user when we are root
        (self.root / "logs").mkdir()
        atexit.register(self.stop)
        try:
            self._start_postgres()
            if self.postgres_only:
                return self
            self._start_redis()
            self._configure_airflow()
            self.airflow("db", "migrate")
            self._start_airflow()
        except BaseException as err:
            err.add_note("\n".join(f"--- {name} log:\n{self.tail(name, 15)}" for name in self.services))
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every process group (TERM, then KILL after a grace period) and remove the folder."""
        airflow = [s for s in self.services.values() if s.name not in ("postgres", "redis")]
        self._stop(airflow, grace=15)
        self._stop([s for s in self.services.values() if s.name in ("postgres", "redis")], grace=15)
        self.services.clear()
        if getattr(self, "root", None) and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)

    @staticmethod
    def _stop(services: list[Service], grace: float) -> None:
        for service in services:
            service.signal(service.stop_signal)
        deadline = time.monotonic() + grace
        while any(s.alive() for s in services) and time.monotonic() < deadline:
            time.sleep(0.2)
        for service in services:
            if service.alive():
                service.signal(signal.SIGKILL)
        for service in services:
            try:
                service.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, user: str | None = None,
               stop_signal: int = signal.SIGTERM) -> Service:
        log = self.root / "logs" / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env if env is not None else self.env, cwd=self.root,
                                       start_new_session=True, user=user)
        self.services[name] = Service(name, process, log, stop_signal)
        return self.services[name]

    def _check_alive(self, name: str) -> bool:
        service = self.services[name]
        if service.process.poll() is not None:
            raise RuntimeError(f"{name} exited ({service.process.returncode}):\n{self.tail(name)}")
        return True

    # -- servers ------------------------------------------------------------------------

    def _start_postgres(self) -> None:
        bins = server_binaries()
        data = self.root / "postgres"
        data.mkdir(mode=0o700)
        user = "postgres" if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root
        if user:
            shutil.chown(data, user, user)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        subprocess.run([bins["initdb"], "-D", str(data), "-U", "airflow", "--auth=trust", "-E", "UTF8",
                        "--locale=C", "--no-sync"], check=True, capture_output=True, env=env, cwd=self.root, user=user)
        self.ports["postgres"] = port = free_port()
        settings = {"listen_addresses": "127.0.0.1", "port": port, "unix_socket_directories": "",
                    "max_connections": 200, "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        argv = [bins["postgres"], "-D", str(data)] + [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
        self._spawn("postgres", argv, env=env, user=user, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
        wait_for("postgres", lambda: self._check_alive("postgres") and self._postgres_accepts(), 60)
        with self._connect("postgres") as conn:
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE airflow")

    def database_url(self, dbname: str) -> str:
        """A new, empty database ``dbname`` on the PostgreSQL server, as a ``postgresql://`` URL."""
        from psycopg2 import sql

        with self._connect("postgres") as conn:
            conn.autocommit = True
            conn.cursor().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return f"postgresql://airflow@127.0.0.1:{self.ports['postgres']}/{dbname}"

    def _connect(self, dbname: str = "airflow"):
        import psycopg2

        return _Closing(psycopg2.connect(host="127.0.0.1", port=self.ports["postgres"], user="airflow", dbname=dbname,
                                         connect_timeout=5))

    def _postgres_accepts(self) -> bool:
        try:
            with self._connect("postgres"):
                return True
        except Exception:
            return False

    def _start_redis(self) -> None:
        data = self.root / "redis"
        data.mkdir()
        self.ports["redis"] = port = free_port()
        self._spawn("redis", [server_binaries()["redis-server"], "--bind", "127.0.0.1", "--port", str(port),
                              "--dir", str(data), "--save", "", "--appendonly", "no", "--daemonize", "no"])
        wait_for("redis", lambda: self._check_alive("redis") and _redis_pong(port), 30, 0.2)

    # -- Airflow ------------------------------------------------------------------------

    def _configure_airflow(self) -> None:
        self.ports["api"] = api = free_port()
        db = f"postgresql+psycopg2://airflow@127.0.0.1:{self.ports['postgres']}/airflow"
        path = os.pathsep.join(filter(None, [str(REPO / "scripts"), os.environ.get("PYTHONPATH")]))
        self.env = {
            **os.environ,
            "PYTHONPATH": path,
            "HF_HUB_OFFLINE": "1",
            "AIRFLOW_HOME": str(self.root / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "celery_cluster.worker_hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # local use only: no login
            # Worker loss: a task that stops heartbeating fails after heartbeat_timeout seconds,
            # and runs again (on a live worker) up to `retries` times.
            "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": str(self.retries),
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "2",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow@127.0.0.1:{self.ports['postgres']}/airflow",
            # One task at a time per worker, none reserved ahead: a lost worker holds no queued shard.
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            # Airflow's default, said here: a dead worker's unacknowledged message is only
            # redelivered after this long; the task's retry (above) runs it again long before.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        }

    def _start_airflow(self) -> None:
        home = Path(self.env["AIRFLOW_HOME"])
        bin_ = str(Path(sys.executable).parent / "airflow")
        self._spawn("api-server", [bin_, "api-server", "--host", "127.0.0.1", "--port", str(self.ports["api"]),
                                   "--workers", "1"])
        self._spawn("scheduler", [bin_, "scheduler", "--skip-serve-logs"])
        self._spawn("dag-processor", [bin_, "dag-processor"])
        for name in self.workers:
            self._spawn(name, [bin_, "celery", "worker", "--celery-hostname", f"{name}@%h", "--skip-serve-logs",
                               "--without-mingle", "--without-gossip", "--pid", str(home / f"{name}.pid")],
                        env={**self.env, WORKER_ENV: name})
        wait_for("api-server", lambda: self._check_alive("api-server") and self._healthy(), 180, 1)
        for name in self.workers:
            wait_for(name, lambda name=name: self._check_alive(name) and " ready." in self.services[name].log.read_text(), 180, 1)
        wait_for(f"{DAG_ID} parsed", lambda: self._check_alive("dag-processor") and self._dag_parsed(), 180, 1)

    def _healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['api']}/api/v2/monitor/health", timeout=5) as r:
                health = json.load(r)
        except OSError:
            return False
        return health["metadatabase"]["status"] == "healthy" and health["scheduler"]["status"] == "healthy"

    def _dag_parsed(self) -> bool:
        return bool(self.sql("SELECT 1 FROM serialized_dag WHERE dag_id = %s", DAG_ID))

    def airflow(self, *args: str) -> str:
        """Run an ``airflow`` command against the cluster; returns its output."""
        bin_ = str(Path(sys.executable).parent / "airflow")
        done = subprocess.run([bin_, *args], env=self.env, cwd=self.root, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    # -- runs ---------------------------------------------------------------------------

    def sql(self, query: str, *params) -> list[tuple]:
        with self._connect() as conn:
            cursor = conn.cursor()
            cursor.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def trigger(self, conf: dict, run_id: str) -> str:
        self.airflow("dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf))
        return run_id

    def run_state(self, run_id: str) -> str | None:
        rows = self.sql("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", DAG_ID, run_id)
        return rows[0][0] if rows else None

    def wait(self, run_id: str, timeout: float = 600, poll: Callable[[], None] | None = None) -> str:
        """Wait for a run to finish (calling ``poll`` meanwhile); returns its state."""
        deadline = time.monotonic() + timeout
        while (state := self.run_state(run_id)) not in FINISHED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {state} after {timeout:.0f} s\n{self.diagnose(run_id)}")
            for name in ("scheduler", "api-server"):
                self._check_alive(name)
            if poll:
                poll()
            time.sleep(0.2 if poll else 1)
        return state

    def task_instances(self, run_id: str, table: str = "task_instance") -> list[dict]:
        """A run's task instances: task, map index, state, worker, try and seconds run.

        ``table="task_instance_history"`` gives the earlier tries of the ones retried.
        """
        rows = self.sql(f"SELECT task_id, map_index, state, hostname, try_number, EXTRACT(EPOCH FROM start_date), "
                        f"EXTRACT(EPOCH FROM end_date) FROM {table} WHERE dag_id = %s AND run_id = %s "
                        f"ORDER BY task_id, map_index, try_number", DAG_ID, run_id)
        names = ("task", "map_index", "state", "hostname", "try", "start", "end")
        found = [dict(zip(names, row[:5] + tuple(None if t is None else float(t) for t in row[5:])))
                 for row in rows]
        for ti in found:
            ti["seconds"] = None if None in (ti["start"], ti["end"]) else round(ti["end"] - ti["start"], 1)
        return found

    def results(self, run_id: str, task: str) -> dict[int, object]:
        """What each (mapped) instance of ``task`` returned, by map index."""
        rows = self.sql("SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s "
                        "AND key = 'return_value' ORDER BY map_index", DAG_ID, run_id, task)
        return {index: json.loads(value) if isinstance(value, str) else value for index, value in rows}

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker as if its machine died: its process group and its tasks' groups."""
        self.services[name].signal(signal.SIGKILL)

    def tail(self, name: str, lines: int = 40) -> str:
        service = self.services.get(name)
        if not service or not service.log.exists():
            return ""
        return "\n".join(service.log.read_text(errors="replace").splitlines()[-lines:])

    def diagnose(self, run_id: str) -> str:
        """Task states and the logs of what failed, for an error message."""
        parts = [json.dumps(self.task_instances(run_id), default=str)]
        logs = Path(self.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
        for ti in self.task_instances(run_id):
            if ti["state"] not in ("success", None):
                for log in sorted(logs.glob(f"task_id={ti['task']}/**/attempt=*.log")):
                    parts.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        parts += [f"--- {name}\n{self.tail(name, 20)}" for name in ("scheduler", *self.workers)]
        return "\n".join(parts)


class _Closing:
    """psycopg2's connection as a context manager that closes it (its own only ends the transaction)."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc) -> None:
        if not exc[0]:
            self.conn.commit()
        self.conn.close()


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# -- the posterlens DAG on a catalogue -----------------------------------------------------


def cached_keys(cache: Path) -> list[str]:
    """Every poster key in the feature cache's chunk files (a key twice: computed twice)."""
    from safetensors import safe_open

    keys = []
    for chunk in sorted(cache.glob("features/*/*.safetensors")):
        with safe_open(str(chunk), framework="numpy") as f:
            keys += f.metadata()["keys"].split(",")
    return keys


def _chunk_keys(path: Path) -> list[str] | None:
    """The keys a chunk file's header lists; None if it is gone (merged away by ``compact``)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return f.metadata()["keys"].split(",")
    except Exception:  # removed between the listing and the read: anything else is raised
        if path.exists():
            raise
        return None


class ChunkKeys:
    """The posters a feature cache's chunk files hold for each of its ``stores`` backbones (what a
    re-run finds cached); each look reads only new files' headers."""

    def __init__(self, cache: Path, stores: int = 1):
        self.cache, self.stores = cache, stores
        self._files: dict[Path, list[str]] = {}

    def keys(self) -> set[str]:
        present = set(self.cache.glob("features/*/*.safetensors"))
        for gone in set(self._files) - present:
            del self._files[gone]
        for path in sorted(present - set(self._files)):
            if (keys := _chunk_keys(path)) is not None:
                self._files[path] = keys
        by_store: dict[Path, set[str]] = {}
        for path, keys in self._files.items():
            by_store.setdefault(path.parent, set()).update(keys)
        if len(by_store) < self.stores:
            return set()
        return set.intersection(*by_store.values())


def shard_keys(conf: dict) -> dict[int, set[str]]:
    """The feature-cache keys of each shard's posters, by shard (= map index of its task)."""
    from posterlens.app.pipeline import PipelineConfig, shard_movies, shards
    from posterlens.data.images import content_hash

    config = PipelineConfig(**conf)
    return {shard["shard"]: {content_hash(Path(p).read_bytes()) for p in shard_movies(config, shard)["path"].dropna()}
            for shard in shards(config)}


@dataclass
class KillDuringEmbed:
    """Kills the worker of a running ``embed`` shard once part, not all, of that shard is cached,
    at least ``shard_at`` of it, and at least ``at`` of the catalogue's posters are (both 0: as soon
    as a shard is part way). Cached: in every backbone's store, so a retry finds it there."""

    cluster: Cluster
    run_id: str
    conf: dict
    at: float = 0.0
    shard_at: float = 0.0
    every: float = 0.0  # least seconds between looks at the cache (``Cluster.wait`` polls every 0.2 s)
    killed: dict | None = None
    _keys: dict[int, set[str]] | None = None
    _chunks: ChunkKeys | None = None
    _last: float = 0.0

    def __call__(self) -> None:
        if self.killed or time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        running = [ti for ti in self.cluster.task_instances(self.run_id)
                   if ti["task"] == "embed" and ti["state"] == "running" and ti["hostname"] in self.cluster.workers]
        if not running:
            return
        self._keys = self._keys or shard_keys(self.conf)
        self._chunks = self._chunks or ChunkKeys(Path(self.conf["out"]) / "cache", len(self.conf["backbone"].split("+")))
        cached = self._chunks.keys()
        catalogue = set().union(*self._keys.values())
        if len(cached & catalogue) < self.at * len(catalogue):
            return
        for ti in running:
            shard = self._keys[ti["map_index"]]
            if 0 < len(shard & cached) < len(shard) and len(shard & cached) >= self.shard_at * len(shard):
                self.cluster.kill_worker(ti["hostname"])
                self.killed = {**ti, "cached_at_kill": len(shard & cached), "shard_posters": len(shard),
                               "catalogue_cached_at_kill": len(cached & catalogue), "catalogue_posters": len(catalogue),
                               "killed_at": time.time()}
                return


@dataclass
class Run:
    """What a DAG run did: its state and time, its task instances and the embed shards' counts."""

    run_id: str
    conf: dict
    state: str
    seconds: float
    tasks: list[dict]
    earlier_tries: list[dict]
    embedded: dict[int, dict]
    killed: dict | None = None

    def __str__(self) -> str:
        lines = [f"run {self.run_id}: {self.state} in {self.seconds:.0f} s"]
        for ti in sorted(self.earlier_tries + self.tasks, key=lambda t: (t["task"], t["map_index"], t["try"])):
            where = ti["task"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            lines.append(f"  {where:<20} try {ti['try']}  {ti['state']:<8} {ti['seconds'] or 0:6.1f} s  on {ti['hostname']}")
        counts = self.embedded.values()
        lines.append(f"  embed: {sum(r['computed'] for r in counts)} posters computed, "
                     f"{sum(r['cached'] for r in counts)} found in the cache")
        if self.killed:
            lines.append(f"  killed {self.killed['hostname']} while embed[{self.killed['map_index']}] had "
                         f"{self.killed['cached_at_kill']}/{self.killed['shard_posters']} posters cached")
        return "\n".join(lines)


def _stage(tasks: list[dict], task: str) -> tuple[float, float] | None:
    """When a stage's first try started and its last one ended (epoch seconds)."""
    spans = [(ti["start"], ti["end"]) for ti in tasks if ti["task"] == task and ti["start"] and ti["end"]]
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None


def throughput(run: Run) -> dict:
    """Stage wall times; posters/s in ``embed`` for the cluster (posters / the stage's wall time,
    first shard started to last shard ended) and for each worker (its posters / the seconds its
    embed tries ran, each with a task's fixed start-up cost). A killed try counts on its worker
    with the posters it had cached (in every backbone's store) and its seconds up to the kill."""
    every = run.tasks + run.earlier_tries
    stages = {task: _stage(every, task) for task in ("check_inputs", "fetch_posters", "embed", "train", "evaluate",
                                                       "predict", "merge_predictions", "report")}
    walls = {task: round(span[1] - span[0], 1) for task, span in stages.items() if span}
    workers: dict[str, dict] = {}
    for ti in run.tasks:
        if ti["task"] == "embed" and ti["state"] == "success":
            worker = workers.setdefault(ti["hostname"], {"shards": 0, "posters": 0, "seconds": 0.0})
            worker["shards"] += 1
            worker["posters"] += run.embedded[ti["map_index"]]["computed"]
            worker["seconds"] += ti["seconds"]
    if run.killed:
        (first,) = [ti for ti in run.earlier_tries if (ti["task"], ti["map_index"], ti["try"]) ==
                    ("embed", run.killed["map_index"], run.killed["try"])]
        worker = workers.setdefault(run.killed["hostname"], {"shards": 0, "posters": 0, "seconds": 0.0})
        worker["killed_try"] = {"posters": run.killed["cached_at_kill"],
                                "seconds": round(run.killed["killed_at"] - first["start"], 1)}
        worker["posters"] += run.killed["cached_at_kill"]
        worker["seconds"] += worker["killed_try"]["seconds"]
    for worker in workers.values():
        worker["seconds"] = round(worker["seconds"], 1)
        worker["posters_per_s"] = round(worker["posters"] / worker["seconds"], 1) if worker["seconds"] else None
    counts = run.embedded.values()
    computed = sum(r["computed"] for r in counts)
    fetched = sum(1 for _ in Path(run.conf["images"]).glob("*.jpg"))
    return {
        "dag_seconds": round(run.seconds, 1), "stage_seconds": walls,
        "fetch_posters_per_s": round(fetched / walls["fetch_posters"], 1) if walls.get("fetch_posters") else None,
        "embed": {"computed": computed, "cached": sum(r["cached"] for r in counts),
                  "failed": sum(r["failed"] for r in counts), "shards": len(run.embedded)},
        "cluster_posters_per_s": round(computed / walls["embed"], 1) if walls.get("embed") else None,
        "workers": dict(sorted(workers.items())),
    }


def check_cache(run: Run) -> dict:
    """Each backbone's feature store after a run, against the posters fetched: every key in exactly
    one chunk row, and the index (``index.sqlite``: its keys table and its chunks table's row
    counts) agreeing with the chunk files. ``written_once`` when all of it holds."""
    import sqlite3
    from collections import Counter

    from posterlens.data.images import content_hash

    images = sorted(Path(run.conf["images"]).glob("*.jpg"))
    posters = {content_hash(p.read_bytes()) for p in images}
    poster_bytes = sum(p.stat().st_size for p in images)
    stores = {}
    for folder in sorted((Path(run.conf["out"]) / "cache" / "features").iterdir()):
        files = sorted(folder.glob("*.safetensors"))
        keys = Counter(key for path in files for key in _chunk_keys(path) or [])
        db = sqlite3.connect(f"file:{folder / 'index.sqlite'}?mode=ro", uri=True)
        try:
            (index_keys,) = db.execute("SELECT COUNT(*) FROM keys").fetchone()
            index_chunks, index_rows, damaged = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(rows), 0), COALESCE(SUM(damaged), 0) FROM chunks").fetchone()
        finally:
            db.close()
        stores[folder.name] = {
            "chunk_files": len(files), "chunk_rows": sum(keys.values()), "distinct_keys": len(keys),
            "keys_in_more_than_one_row": sum(n > 1 for n in keys.values()),
            "posters_missing": len(posters - set(keys)), "keys_not_a_poster": len(set(keys) - posters),
            "index_keys": index_keys, "index_chunks": index_chunks, "index_rows": index_rows,
            "index_damaged_chunks": damaged, "unfinished_tmp_files": len(list(folder.glob(".*.tmp"))),
            "chunk_bytes": sum(p.stat().st_size for p in files),
            "index_bytes": sum(p.stat().st_size for p in folder.glob("index.sqlite*"))}
    once = bool(stores) and all(
        s["keys_in_more_than_one_row"] == 0 and s["posters_missing"] == 0 and s["keys_not_a_poster"] == 0
        and s["chunk_rows"] == s["distinct_keys"] == s["index_keys"] == s["index_rows"] == len(posters)
        and s["index_chunks"] == s["chunk_files"] and s["index_damaged_chunks"] == 0 for s in stores.values())
    return {"posters": len(posters), "poster_bytes": poster_bytes, "stores": stores, "written_once": once}


def prepare_engines(folder: Path, backbone: str, posters: int) -> dict:
    """Make the backbones' models for the engine ``embed_shard`` picks for a catalogue of ``posters``
    (exports, int8 models and this machine's engine timings) in a cache folder, unless there already.
    Each run's new feature cache gets a copy (``copy_engines``), as a deployment ships its models,
    so that runs time embedding alone and all use one engine."""
    from posterlens.app.pipeline import PipelineConfig
    from posterlens.features.engines import make_runner, resolve_engine

    start = time.monotonic()
    spec = PipelineConfig(catalog="", images="", out=str(folder), backbone=backbone).train_config().feature_spec()
    engine = resolve_engine("auto", spec.backbones, folder, posters=posters)
    for b in spec.backbones:
        make_runner(b, folder, engine)
    return {"engine": engine, "seconds": round(time.monotonic() - start, 1)}


def copy_engines(engines: Path, cache: Path) -> None:
    """A cache folder's models and engine timings (not its features) into a run's feature cache."""
    shutil.copytree(engines, cache, ignore=shutil.ignore_patterns("features"), dirs_exist_ok=True)


def run_sample(cluster: Cluster, catalog: Path, work: Path, run_id: str, shard_size: int = 80, epochs: int = 3,
               kill_worker: bool = False, timeout: float = 600, backbone: str = "efficientnet_lite0",
               kill_at: float = 0.0, kill_shard_at: float = 0.0, engines: Path | None = None) -> Run:
    """Trigger the DAG on a catalogue with its own ``out`` (and feature cache) under ``work``.

    The posters go to ``work/images``, shared by the runs. With ``kill_worker`` a worker is
    SIGKILLed while an ``embed`` shard it runs is part way through (``KillDuringEmbed``: once
    ``kill_at`` of the catalogue and ``kill_shard_at`` of the shard are cached). ``engines``: a folder of ``prepare_engines`` copied into the new cache.
    """
    conf = {"catalog": str(catalog), "images": str(work / "images"), "out": str(work / run_id),
            "shard_size": shard_size, "epochs": epochs, "min_genre_count": 10, "allow_private_hosts": True,
            "backbone": backbone}  # lite0 alone by default: this run is about the workers, not the features
    if engines:
        copy_engines(engines, Path(conf["out"]) / "cache")
    start = time.monotonic()
    cluster.trigger(conf, run_id)
    killer = KillDuringEmbed(cluster, run_id, conf, at=kill_at, shard_at=kill_shard_at) if kill_worker else None
    state = cluster.wait(run_id, timeout, poll=killer)
    return Run(run_id, conf, state, time.monotonic() - start, cluster.task_instances(run_id),
               cluster.task_instances(run_id, "task_instance_history"), cluster.results(run_id, "embed"),
               killer.killed if killer else None)


def reuse_onnx_export(first: Run, work: Path, run_id: str) -> None:
    """Give a new run's cache the backbone's ONNX export (features are still computed anew)."""
    shutil.copytree(Path(first.conf["out"]) / "cache" / "onnx", work / run_id / "cache" / "onnx")


def _throughput_lines(run: Run, speed: dict, checks: dict) -> str:
    embed, stages = speed["embed"], speed["stage_seconds"]
    lines = [f"  DAG {speed['dag_seconds']:.0f} s (trigger to {run.state}); stages (first start to last end): "
             + ", ".join(f"{task} {s:.0f} s" for task, s in stages.items()),
             f"  fetch: {speed['fetch_posters_per_s']} posters/s for the cluster",
             (f"  embed: {embed['computed']:,} computed + {embed['cached']:,} cached ({embed['failed']} failed) in "
              f"{embed['shards']} shards, {stages.get('embed', 0):.0f} s: {speed['cluster_posters_per_s']} posters/s "
              f"for the cluster")]
    for name, w in speed["workers"].items():
        extra = (f" (incl. the killed try: {w['killed_try']['posters']} posters in {w['killed_try']['seconds']} s)"
                 if "killed_try" in w else "")
        lines.append(f"  {name}: {w['shards']} shards, {w['posters']:,} posters in {w['seconds']:.0f} s of embed "
                     f"tasks: {w['posters_per_s']} posters/s{extra}")
    for name, s in checks["stores"].items():
        lines.append(f"  cache {name}: {s['chunk_files']} chunk files, {s['chunk_rows']:,} rows, "
                     f"{s['distinct_keys']:,} distinct keys, {s['keys_in_more_than_one_row']} in more than one row; "
                     f"index {s['index_keys']:,} keys / {s['index_rows']:,} rows in {s['index_chunks']} chunks "
                     f"({s['index_damaged_chunks']} damaged); posters {checks['posters']:,}, missing "
                     f"{s['posters_missing']}, strays {s['keys_not_a_poster']}; .tmp left {s['unfinished_tmp_files']}")
    lines.append(f"  every key written once: {checks['written_once']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SAMPLE,
                        help="a folder with MovieGenre.csv and images/tt<id>.jpg, served from 127.0.0.1 (the sample; "
                             "scripts/make_big_catalogue.py makes larger ones)")
    parser.add_argument("--workers", type=int, default=len(WORKERS), choices=range(1, len(WORKERS) + 1))
    parser.add_argument("--shard-size", type=int, default=80, help="movies per fetch/embed shard (the sample has 240)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backbone", default="efficientnet_lite0", help="one backbone, or several joined by '+'")
    parser.add_argument("--runs", nargs="+", choices=("plain", "killed"), default=["plain"],
                        help="plain: a run; killed: a run on a fresh feature cache, SIGKILLing a worker during embed")
    parser.add_argument("--kill-worker", action="store_true", help="the same as --runs plain killed")
    parser.add_argument("--kill-at", type=float, default=0.0,
                        help="in the killed run, kill once this share of the catalogue's posters is cached")
    parser.add_argument("--kill-shard-at", type=float, default=0.0,
                        help="... and this share of the posters of the shard the killed worker runs")
    parser.add_argument("--engines", type=Path,
                        help="a cache folder for the models and engine timings (made there if missing), copied into "
                             "each run's cache; default: made anew in the cluster's folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a run may take")
    parser.add_argument("--report", type=Path, help="also write what was measured here, as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the cluster up (UI on 127.0.0.1) until Ctrl-C")
    args = parser.parse_args()
    wanted = ["plain", "killed"] if args.kill_worker else list(dict.fromkeys(args.runs))
    if "killed" in wanted and args.workers < 2:
        parser.error("a killed run needs 2 workers: one to kill, one to finish")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the cluster is stopped

    started = time.monotonic()
    runs, report = [], {"argv": sys.argv[1:], "runs": []}
    with Cluster(workers=WORKERS[:args.workers]) as cluster, serve_folder(args.data / "images") as base_url:
        print(f"cluster up in {time.monotonic() - started:.0f} s in {cluster.root} (logs in {cluster.root / 'logs'}): "
              f"postgres 127.0.0.1:{cluster.ports['postgres']}, redis 127.0.0.1:{cluster.ports['redis']}, "
              f"api-server http://127.0.0.1:{cluster.ports['api']}, workers {', '.join(cluster.workers)}", flush=True)
        work = cluster.root / "runs"
        catalog = catalog_with_urls(args.data / "MovieGenre.csv", base_url, work / "MovieGenre.csv")
        movies = sum(1 for _ in catalog.open(encoding="utf-8")) - 1  # an upper bound: rows, not movies
        engines = args.engines or work / "engines"
        report["engines"] = prepare_engines(engines, args.backbone, movies)
        print(f"engines in {engines}: {report['engines']}", flush=True)
        for kind in wanted:
            run_id = "distributed" if kind == "plain" else "worker-killed"
            load = os.getloadavg()
            run = run_sample(cluster, catalog, work, run_id, args.shard_size, args.epochs, kill_worker=kind == "killed",
                             timeout=args.timeout, backbone=args.backbone, kill_at=args.kill_at,
                             kill_shard_at=args.kill_shard_at, engines=engines)
            runs.append(run)
            speed, checks = throughput(run), check_cache(run)
            print(f"{run}\n{_throughput_lines(run, speed, checks)}", flush=True)
            report["runs"].append({"run_id": run_id, "workers": list(cluster.workers), "posters": movies,
                                   "state": run.state, "loadavg_before": load, "loadavg_after": os.getloadavg(),
                                   "killed": run.killed, "throughput": speed, "cache": checks,
                                   "tasks": run.tasks, "earlier_tries": run.earlier_tries})
            if run.state == "success":
                report["runs"][-1]["summary"] = json.loads((Path(run.conf["out"]) / "summary.json").read_text())
                print(f"{run.run_id}: {(Path(run.conf['out']) / 'summary.json').read_text()}", flush=True)
            else:
                print(cluster.diagnose(run.run_id), flush=True)
            if kind == "killed" and not run.killed:
                print(f"{run.run_id}: no embed shard was caught part way through, so no worker was killed", flush=True)
        if args.report:
            args.report.write_text(json.dumps(report, indent=1, default=str))
        if args.keep:
            print(f"\nUI: http://127.0.0.1:{cluster.ports['api']}  (Ctrl-C stops everything)", flush=True)
            try:
                while all(s.alive() for name, s in cluster.services.items() if name not in cluster.workers):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    print(f"stopped; {cluster.root} removed; all done in {time.monotonic() - started:.0f} s")
    killed_as_asked = all(run.killed for run in runs if run.run_id == "worker-killed")
    return 0 if all(run.state == "success" for run in runs) and killed_as_asked else 1


if __name__ == "__main__":
    sys.exit(main())
