"""`metis services up|down|status`: a Prefect server and an MLflow tracking server on this machine.

Both listen on 127.0.0.1 by default and keep everything under `<output_dir>/services/`: their
logs, a `services.json` with PIDs and URLs, Prefect's database (SQLite, or a PostgreSQL cluster
this command initialises and starts with `--database postgres`). MLflow serves the same store the
embedded default writes (`<output_dir>/mlflow.db`, artifacts in `<output_dir>/mlartifacts`), so
runs logged before the services were up are there too. `metis train`, `eval` and `compare` use
the services while they answer (`service_environment`) and fall back to the embedded default
(a temporary Prefect server, the sqlite MLflow store) when they do not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STARTUP_S = 240.0  # a fresh Prefect database migrates on first start: minutes on 2 busy cores
STOP_S = 20.0
HEALTH = {"prefect": "/api/health", "mlflow": "/health"}


class ServiceError(RuntimeError):
    """A service did not start or stop; the message names its log."""


def _dir(output_dir: str | Path) -> Path:
    return Path(output_dir).resolve() / "services"


def _state(output_dir: str | Path) -> dict[str, dict[str, object]]:
    path = _dir(output_dir) / "services.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _healthy(url: str, name: str) -> bool:
    try:
        with urllib.request.urlopen(url + HEALTH[name], timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port(host: str, wanted: int) -> int:
    """`wanted` if nothing listens there, else a free port the kernel picks."""
    for port in (wanted, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ServiceError(f"no free port on {host}")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
            start_new_session=True,  # one process group: `down` stops the server's children too
        )  # fmt: skip


def _stop(pid: int) -> None:
    """SIGTERM to the process group, SIGKILL after STOP_S."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _as_postgres() -> list[str]:
    """The prefix that runs a PostgreSQL command: as the `postgres` user when we are root
    (PostgreSQL refuses to run as root), else as ourselves."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _postgres_root(folder: Path) -> Path:
    """Where the cluster lives: `folder/postgres`, or, as root when the `postgres` user cannot
    reach that folder (a private parent such as pytest's), a fixed folder under /var/tmp that
    `folder/postgres` links to."""
    root = folder / "postgres"
    if os.geteuid() != 0 or root.is_symlink():
        return root.resolve()
    reach = subprocess.run([*_as_postgres(), "test", "-x", str(folder)])
    if reach.returncode == 0:
        return root
    private = (
        Path("/var/tmp") / f"metis-postgres-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"
    )
    private.mkdir(parents=True, exist_ok=True)
    root.symlink_to(private)
    return private


def _postgres(root: Path, host: str) -> tuple[str, int]:
    """Initialise (once) and start a PostgreSQL cluster under `root`; its connection URL, pid."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        raise ServiceError(
            "--database postgres needs PostgreSQL's initdb and pg_ctl on PATH "
            "(Debian: apt-get install postgresql); or use the default SQLite"
        )
    as_user = _as_postgres()
    if as_user:
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port(host, 5432)
    if not (data / "PG_VERSION").is_file():
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "prefect", "--auth=trust"],
                       check=True, capture_output=True)  # fmt: skip
    opts = f"-h {host} -p {port} -k {root}"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "postgres.log"), "-o", opts,
                    "-w", "-t", "120", "start"], check=True, capture_output=True)  # fmt: skip
    pid = int((data / "postmaster.pid").read_text().split()[0])
    url = f"postgresql+asyncpg://prefect@{host}:{port}/postgres"
    return url, pid


def up(
    output_dir: str | Path,
    host: str = "127.0.0.1",
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    database: str = "sqlite",
) -> dict[str, dict[str, object]]:
    """Start what is not already answering; wait until both answer; return their state."""
    folder, out = _dir(output_dir), Path(output_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in _state(output_dir).items() if _healthy(str(v["url"]), k)}
    starting: dict[str, subprocess.Popen[bytes]] = {}
    if "prefect" not in state:
        port = _free_port(host, prefect_port)
        url, home = f"http://{host}:{port}", folder / "prefect"
        env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_API_URL": f"{url}/api", "PREFECT_API_URL": f"{url}/api"}  # fmt: skip
        entry: dict[str, object] = {"url": url, "log": str(folder / "prefect.log")}
        if database == "postgres":
            db_url, db_pid = _postgres(_postgres_root(folder), host)
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
            entry |= {"database": db_url, "database_pid": db_pid}
        else:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = (
                f"sqlite+aiosqlite:///{home / 'prefect.db'}"
            )
        cmd = [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)]
        starting["prefect"] = _start(cmd, env, folder / "prefect.log")
        state["prefect"] = entry | {"pid": starting["prefect"].pid}
    if "mlflow" not in state:
        from metis_core.tracking.mlflow_tracker import create_sqlite_store, default_tracking_uri

        store = default_tracking_uri(out)  # the store runs write to when no server answers
        create_sqlite_store(store)  # whole, before the server opens it
        port = _free_port(host, mlflow_port)
        cmd = [_bin("mlflow"), "server", "--host", host, "--port", str(port),
               "--backend-store-uri", store,
               "--artifacts-destination", str(out / "mlartifacts")]  # fmt: skip
        env = {"MLFLOW_DISABLE_TELEMETRY": "true"}
        starting["mlflow"] = _start(cmd, env, folder / "mlflow.log")
        state["mlflow"] = {"url": f"http://{host}:{port}", "pid": starting["mlflow"].pid,
                           "log": str(folder / "mlflow.log")}  # fmt: skip
    (folder / "services.json").write_text(json.dumps(state, indent=2))
    deadline = time.monotonic() + STARTUP_S
    for name, proc in starting.items():
        while not _healthy(str(state[name]["url"]), name):
            if proc.poll() is not None or time.monotonic() > deadline:
                down(output_dir)
                raise ServiceError(f"{name} did not start; see {state[name]['log']}")
            time.sleep(0.5)
    _machine_limit(f"{state['prefect']['url']}/api")
    return state


RETRYABLE = (429, 502, 503)
"""What Prefect's own client retries; 503 is the server's answer to errors it calls retryable,
such as a SQLite "database is locked" (docs/deployments.md)."""


def prefect_call(
    request: urllib.request.Request, timeout: float = 60, within: float = 180
) -> bytes:
    """The body of a Prefect API answer to `request`, retrying RETRYABLE answers for up to
    `within` seconds, as Prefect's client does; other HTTP errors are raised at once."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return reply.read()
        except urllib.error.HTTPError as err:
            if err.code not in RETRYABLE or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _machine_limit(api: str, name: str = "metis-machine") -> None:
    """The global concurrency limit training runs take a slot of (flows/train.py): one run of
    metis at a time on this machine. Kept if it exists (a user may have raised it)."""
    body = json.dumps({"name": name, "limit": 1, "active": True}).encode()
    request = urllib.request.Request(f"{api}/v2/concurrency_limits/", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        prefect_call(request)
    except urllib.error.HTTPError as err:
        if err.code != 409:  # 409: it exists
            raise ServiceError(f"could not create the concurrency limit {name}: {err}") from err


def down(output_dir: str | Path) -> list[str]:
    """Stop every service this folder started (and its PostgreSQL); return their names."""
    state = _state(output_dir)
    for entry in state.values():
        _stop(int(str(entry["pid"])))
    db = state.get("prefect", {}).get("database_pid")
    if db:  # after Prefect: a smart shutdown waits for its connections
        data = (_dir(output_dir) / "postgres").resolve() / "data"
        pg_ctl = shutil.which("pg_ctl") or "pg_ctl"
        subprocess.run([*_as_postgres(), pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)  # fmt: skip
    (_dir(output_dir) / "services.json").unlink(missing_ok=True)
    return sorted(state)


def status(output_dir: str | Path) -> dict[str, str]:
    """Each known service: "up <url>", "not answering <url>" or "down"."""
    state, found = _state(output_dir), {}
    for name in ("prefect", "mlflow"):
        entry = state.get(name)
        if entry is None:
            found[name] = "down"
        elif _healthy(str(entry["url"]), name):
            found[name] = f"up {entry['url']}  (pid {entry['pid']}, log {entry['log']})"
        else:
            alive = _alive(int(str(entry["pid"])))
            found[name] = f"not answering {entry['url']} ({'running' if alive else 'exited'})"
    return found


def service_environment(output_dir: str | Path) -> dict[str, str]:
    """PREFECT_API_URL / MLFLOW_TRACKING_URI of the services that answer now (nothing else)."""
    env, state = {}, _state(output_dir)
    if (p := state.get("prefect")) and _healthy(str(p["url"]), "prefect"):
        env["PREFECT_API_URL"] = f"{p['url']}/api"
    if (m := state.get("mlflow")) and _healthy(str(m["url"]), "mlflow"):
        env["MLFLOW_TRACKING_URI"] = str(m["url"])
    return env
