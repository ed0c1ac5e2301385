"""A throwaway multi-worker setup on one machine, for trying pool mode and for its tests:
PostgreSQL (Optuna, MLflow and Prefect databases), an MLflow server with proxied artifacts, a
Prefect server, the `gpu` work pool with the `study` deployment, and W workers, each with a warm
engine (flows/warm_engine.py) that has a study run's libraries imported before it starts. Every server
binds 127.0.0.1. On real hosts run the same pieces as services (README, Scale-out).

    medops cluster up --workers 2      # prints the URLs; `source <dir>/env` points commands at it
    medops cluster down                # stops exactly the processes `up` started (by pid)

Credentials: the database password is generated, kept in a libpq password file (<dir>/pgpass,
mode 600) that psycopg2 and asyncpg read through PGPASSFILE, and never written into a URL.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medops.errors import MedopsError

DATABASES = ("optuna", "mlflow", "prefect")
USER = "medops"
QUIET = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
# Workers ask for new flow runs every 10 s by default, most of a short study's wait in the pool:
# here every 2 s. Their flow runs send a heartbeat every 30 s (the least Prefect allows):
# flows/automations.yaml marks a run whose heartbeats stop Crashed.
WORKER_SETTINGS = {"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2",
                   "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}

# The command a worker starts for each study run. A shell expands it on the worker's host, so a
# deployment made on one host runs from each worker's own checkout and environment.
ENGINE_COMMAND = shlex.join(["sh", "-c", 'exec python "$MEDOPS_PROJECT_DIR/flows/engine.py"'])

# MLflow's server starts four job consumers (GenAI jobs, trace roll-ups) by default: about 1 GB
# and some CPU the pipeline never uses, taken from the workers' cores
MLFLOW_SERVER_SETTINGS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass
class Cluster:
    dir: str
    pg_port: int
    mlflow_url: str
    prefect_url: str
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """What a client of the cluster needs (the training flow, the CLI, a worker)."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url, "PREFECT_API_URL": self.prefect_url,
            "MEDOPS_OPTUNA_STORAGE": f"postgresql+psycopg2://{USER}@127.0.0.1:{self.pg_port}/optuna",
            "PGPASSFILE": str(Path(self.dir) / "pgpass"),
            # a shared folder standing in for s3://...: workers in other checkouts resume trials from it
            "MEDOPS_CHECKPOINT_STORE": (Path(self.dir) / "checkpoints").as_uri(),
        }


def _tool(name: str) -> str:
    """A console script of this environment (mlflow, prefect), found without an activated venv."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _state_file(folder: Path) -> Path:
    return folder / "cluster.json"


def load(folder: Path) -> Cluster | None:
    state = _state_file(folder)
    return Cluster(**json.loads(state.read_text())) if state.exists() else None


def free_port() -> int:
    """A port free on the loopback interface now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:  # a child of this process (`up` started it) that exited stays a zombie until reaped here
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not ours: started by another command, `down` for one
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, env: dict | None = None, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise MedopsError(f"{what} failed ({' '.join(cmd[:4])} ...):\n{(proc.stdout + proc.stderr)[-2000:]}")


def _wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise MedopsError(f"{what} exited with {proc.returncode}; its log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise MedopsError(f"{what} did not answer {url} within {timeout:.0f} s; its log: {log}")


def _start(cmd: list[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """A server or worker in its own process group, so `down` stops it with its children."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_postgres(folder: Path) -> int:
    """initdb + pg_ctl start in <folder>/pg on a free loopback port, password auth (the password
    in <folder>/pgpass), the three databases; returns the port."""
    data, port, password = folder / "pg", free_port(), secrets.token_urlsafe(18)
    data.mkdir(mode=0o700)
    pwfile = folder / "pg-password"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(folder)]).returncode != 0:
            raise MedopsError(f"the postgres user cannot reach {folder}: pass --dir on a path it can read "
                              "(for example under /tmp)")
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        _run(_as_postgres(["initdb", "-D", str(data), "-U", USER, "--pwfile", str(pwfile), "--auth", "scram-sha-256",
                           "--encoding", "UTF8", "--no-instructions"]), "initdb")
    finally:
        pwfile.unlink()
    restart_postgres(folder, port)
    pgpass = folder / "pgpass"
    pgpass.write_text(f"127.0.0.1:{port}:*:{USER}:{password}\n")
    pgpass.chmod(0o600)

    import psycopg2  # the driver Optuna and MLflow use here

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres", passfile=str(pgpass))
    conn.autocommit = True
    with conn.cursor() as cur:
        for name in DATABASES:
            cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return port


def up(folder: Path, workers: int = 2, threads: int | None = None, gpus: list[str] | None = None,
       project: Path | None = None, warm: bool = True) -> Cluster:
    """Start everything; on any failure, stop what was started and say which piece failed."""
    folder, project = folder.resolve(), (project or Path.cwd()).resolve()
    running = load(folder)
    if running and any(_alive(pid) for pid in running.pids.values()):
        raise MedopsError(f"a cluster is already up from {folder} (medops cluster down --dir {folder})")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    folder.chmod(0o711)  # the postgres user traverses it to its data folder
    pg_port = start_postgres(folder)
    cluster = Cluster(dir=str(folder), pg_port=pg_port, mlflow_url=f"http://127.0.0.1:{free_port()}",
                      prefect_url=f"http://127.0.0.1:{free_port()}/api", pids={})
    _save(cluster)
    try:
        _servers(cluster, project)
        _pool_and_workers(cluster, project, workers, threads, gpus or [], warm)
        _wait_ready(cluster)
    except BaseException:
        down(folder)
        raise
    (folder / "env").write_text("".join(f"export {k}={v}\n" for k, v in cluster.env.items()))
    return cluster


def _base_env(cluster: Cluster, project: Path) -> dict[str, str]:
    return {**os.environ, **QUIET, **cluster.env, "MEDOPS_PROJECT_DIR": str(project),
            "PREFECT_HOME": str(Path(cluster.dir) / "prefect-home")}


def _servers(cluster: Cluster, project: Path) -> None:
    folder, env = Path(cluster.dir), _base_env(cluster, project)
    mlflow_port = int(cluster.mlflow_url.rsplit(":", 1)[1])
    log = folder / "mlflow.log"
    server = _start([_tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                     "--backend-store-uri", f"postgresql+psycopg2://{USER}@127.0.0.1:{cluster.pg_port}/mlflow",
                     "--artifacts-destination", str(folder / "artifacts")], log, {**env, **MLFLOW_SERVER_SETTINGS})
    cluster.pids["mlflow"] = server.pid
    _save(cluster)
    prefect_port = int(cluster.prefect_url.removesuffix("/api").rsplit(":", 1)[1])
    prefect_db = f"postgresql+asyncpg://{USER}@127.0.0.1:{cluster.pg_port}/prefect"  # password from PGPASSFILE
    plog = folder / "prefect.log"
    prefect = _start([_tool("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)], plog,
                     {**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_db})
    cluster.pids["prefect"] = prefect.pid
    _save(cluster)
    _wait_http(f"{cluster.mlflow_url}/health", server, log, "the MLflow server")
    _wait_http(f"{cluster.prefect_url}/health", prefect, plog, "the Prefect server")


def _pool_and_workers(cluster: Cluster, project: Path, workers: int, threads: int | None, gpus: list[str],
                      warm: bool) -> None:
    """The `gpu` pool, the `study` deployment (prefect.yaml), the automations the flow relies on
    (flows/automations.yaml), and one worker per GPU or W workers, each running one flow run at
    a time (--limit 1), each with its warm engine (flows/warm_engine.py) unless warm is False."""
    folder, env = Path(cluster.dir), _base_env(cluster, project)
    _run([_tool("prefect"), "work-pool", "create", "gpu", "--type", "process", "--overwrite"], "creating the gpu pool", env,
         project)
    # An explicit engine command: without one, the process worker starts a workspace supervisor
    # that imports Prefect only to start the engine as a second process, once per study run.
    # flows/engine.py is Prefect's engine with a fast exit (medops.exiting).
    # Deployed without MEDOPS_PROJECT_DIR, so neither the command nor the pull step is pinned to
    # this checkout: each study run finds its own through its worker's environment.
    _run([_tool("prefect"), "--no-prompt", "deploy", "--name", "study", "--job-variable", f"command={ENGINE_COMMAND}"],
         "deploying medops-study/study", {k: v for k, v in env.items() if k != "MEDOPS_PROJECT_DIR"}, project)
    _run([_tool("prefect"), "automation", "create", "--from-file", "flows/automations.yaml"],
         "creating the automations of flows/automations.yaml", env, project)
    slots = gpus or [None] * workers
    for i, gpu in enumerate(slots):
        # the engine command's `python` is this environment's, as on a host with it first on PATH
        path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        wenv = {**env, **WORKER_SETTINGS, "PATH": path}
        if threads:  # torch reads these at import: one core per worker on a small host
            wenv.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if gpu is not None:
            wenv["CUDA_VISIBLE_DEVICES"] = gpu
        if warm:  # started with the worker's environment: a standby imports what its runs would
            wenv["MEDOPS_WARM_ENGINE"] = str(_socket_path(folder, f"warm-{i}.sock"))
            keeper = _start([sys.executable, str(project / "flows" / "warm_engine.py"), "--socket",
                             wenv["MEDOPS_WARM_ENGINE"]], folder / f"warm-{i}.log", wenv, project)
            cluster.pids[f"warm-{i}"] = keeper.pid
            _save(cluster)
        worker = _start([_tool("prefect"), "worker", "start", "--pool", "gpu", "--limit", "1", "--name", f"worker-{i}"],
                        folder / f"worker-{i}.log", wenv, project)
        cluster.pids[f"worker-{i}"] = worker.pid
        _save(cluster)


WARM_READY = "ready after"  # what flows/warm_engine.py prints once its imports are done


def _wait_ready(cluster: Cluster, timeout: float = 180) -> None:
    """Until every worker has registered with the pool and every warm engine has imported what
    its runs need: a flow started right after `up` then neither waits for them nor shares the
    CPU with their imports."""
    folder = Path(cluster.dir)
    workers = {name for name in cluster.pids if name.startswith("worker-")}
    engines = {name for name in cluster.pids if name.startswith("warm-")}
    deadline = time.time() + timeout
    while True:
        for name in [*workers, *engines]:
            if not _alive(cluster.pids[name]):
                raise MedopsError(f"{name} exited while starting; its log: {folder / (name + '.log')}")
        engines = {name for name in engines if WARM_READY not in (folder / f"{name}.log").read_text(errors="replace")}
        workers -= registered_workers(cluster)
        if not workers and not engines:
            return
        if time.time() > deadline:
            raise MedopsError(f"not ready within {timeout:.0f} s: {', '.join(sorted(workers | engines))}; their logs "
                              f"are in {folder}")
        time.sleep(0.5)


def registered_workers(cluster: Cluster) -> set[str]:
    """Names of the workers the Prefect server has heard from on the `gpu` pool."""
    request = urllib.request.Request(f"{cluster.prefect_url}/work_pools/gpu/workers/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return {worker["name"] for worker in json.load(response) if worker.get("status") == "ONLINE"}


def _socket_path(folder: Path, name: str) -> Path:
    """folder/name, or a private folder under /tmp where that is longer than a Unix socket
    path may be (108 bytes)."""
    path = folder / name
    if len(str(path).encode()) < 100:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="medops-warm-")) / name


def _save(cluster: Cluster) -> None:
    _state_file(Path(cluster.dir)).write_text(json.dumps(asdict(cluster), indent=2))


def down(folder: Path, timeout: float = 30) -> list[str]:
    """Stop the workers, the servers (each with its process group) and PostgreSQL."""
    folder = folder.resolve()
    cluster = load(folder)
    if cluster is None:
        raise MedopsError(f"no cluster state in {folder}: nothing to stop")
    stopped = []
    for name, pid in sorted(cluster.pids.items(), key=lambda kv: not kv[0].startswith("worker")):
        if _alive(pid):
            _stop_group(pid, timeout)
            stopped.append(name)
    if stop_postgres(folder):
        stopped.append("postgresql")
    cluster.pids = {}
    _save(cluster)
    return stopped


def stop_postgres(folder: Path, mode: str = "fast") -> bool:
    """pg_ctl stop (mode immediate: as a crash would); False if it was not running."""
    data = folder / "pg"
    if not (data / "postmaster.pid").exists():
        return False
    _run(_as_postgres(["pg_ctl", "-D", str(data), "-m", mode, "-w", "stop"]), "pg_ctl stop")
    return True


def restart_postgres(folder: Path, port: int) -> None:
    """pg_ctl start of the database start_postgres made, on its port."""
    data = folder / "pg"
    _run(_as_postgres(["pg_ctl", "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60", "start", "-o",
                       f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"]), "pg_ctl start")


def _stop_group(pid: int, timeout: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reaped if it is our child (a zombie still answers killpg)
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
