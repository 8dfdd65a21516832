"""A deployment's flow run killed with SIGKILL resumes without a person: a real Prefect server,
a process work pool and worker, the automation in infra/prefect/automations.yaml puts the
crashed run back on the queue, and the worker finishes it in the same run folder."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect(env, *args, timeout=120):
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def background(env, log, *args):
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def flow_run_processes(group: int) -> list[int]:
    """PIDs of flow-run processes (prefect.engine) in a process group."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"prefect.engine" in cmd and os.getpgid(int(pid)) == group:
                found.append(int(pid))
        except (OSError, ProcessLookupError):
            continue
    return found


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there 20 s later."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


DEPLOY = """
import sys
from prefect import flow
flow.from_source(source=sys.argv[1], entrypoint="flows/train.py:train").deploy(
    name="tiny", work_pool_name="crash-test", parameters={"overrides": sys.argv[2:]}
)
"""


def test_a_crashed_deployment_run_resumes_by_itself(tiny_model, tmp_path):
    port = free_port()
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
    )
    out = tmp_path / "runs"
    server = background(
        env, tmp_path / "server.log", "prefect", "server", "start", "--host", "127.0.0.1",
        "--port", str(port),
    )  # fmt: skip
    worker = None
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(1)
        prefect(env, "work-pool", "create", "crash-test", "--type", "process")
        prefect(env, "automation", "create", "--from-file", "infra/prefect/automations.yaml")
        overrides = [
            f"model.path={tiny_model}", f"output_dir={out}", "model.dtype=float32", "steps=3",
            "curriculum.batch_prompts=2", "curriculum.pool_multiplier=3", "rollout.n=4",
            "eval.every=0", "eval.max_prompts=4", "eval.samples=2", "eval.audit_prompts=0",
            "trainer.micro_batch_size=4", "checkpoint_every=1",
        ]  # fmt: skip
        subprocess.run(
            [sys.executable, "-c", DEPLOY, str(REPO), *overrides],
            cwd=REPO, env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        worker = background(
            env, tmp_path / "worker.log", "prefect", "worker", "start", "--pool", "crash-test"
        )
        prefect(env, "deployment", "run", "metis-train/tiny")

        deadline = time.time() + 600
        while not list(out.glob("*/checkpoints/step-000000/manifest.json")):
            assert time.time() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        (engine,) = flow_run_processes(worker.pid)
        os.kill(engine, signal.SIGKILL)  # the machine is lost mid-run

        states = state_names(env["PREFECT_API_URL"])
        while states[0] != "Completed":  # crashed, put back, run again, finished
            assert time.time() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(2)
            states = state_names(env["PREFECT_API_URL"])
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop(proc)

    (run_dir,) = [p for p in out.iterdir() if (p / "run.json").is_file()]
    assert "continuing at step 1" in (tmp_path / "worker.log").read_text()
    con = duckdb.connect(str(run_dir / "history.duckdb"), read_only=True)
    try:
        per_step = con.execute("SELECT step, count(*) FROM outcomes GROUP BY step ORDER BY step")
        assert per_step.fetchall() == [(0, 8), (1, 8), (2, 8)]
    finally:
        con.close()
    assert "Crashed" in states and "AwaitingRetry" in states


def state_names(api: str) -> list[str]:
    """The one flow run's state names, newest first (Prefect's REST API)."""

    def call(path: str, body: dict | None = None):
        request = urllib.request.Request(
            f"{api}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    (flow_run,) = call("/flow_runs/filter", {})
    history = call(f"/flow_run_states/?flow_run_id={flow_run['id']}")
    return [s["name"] for s in sorted(history, key=lambda s: s["timestamp"], reverse=True)]
