"""docs/deployments.md's walkthrough, command by command, then what it promises: real Prefect and
MLflow servers from `metis services up`, a process work pool, `prefect deploy --all` from
prefect.yaml, the resume automation, a worker; a triggered tiny training run that is killed with
SIGKILL, resumed without a person, then preempted with SIGTERM and resumed again, reaching
Completed with one MLflow run and nothing recorded twice; its checkpoint events triggering
`metis-eval`; an active schedule creating its runs; the MLflow registry holding a version per
checkpoint with the alias `best`; then the services stopped with no process left behind.

Only the walkthrough's two settings are the test's own: METIS_OUT (a temporary folder) and
METIS_OVERRIDES (the tiny model, four iterations)."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from mlflow.tracking import MlflowClient

from flows import services
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def walkthrough() -> list[str]:
    """The bash lines of the block after `<!-- walkthrough -->` in docs/deployments.md."""
    doc = (REPO / "docs" / "deployments.md").read_text()
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```", doc, re.S)
    assert block, "docs/deployments.md lost its walkthrough block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def api(url: str, path: str, body: dict | None = None, method: str | None = None):
    """A Prefect API call, retried as Prefect's client retries (flows.services.prefect_call:
    503 is a SQLite `database is locked`); one attempt may stall for the server's 60 s busy
    timeout."""
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method=method,
    )
    text = services.prefect_call(request, timeout=180)
    return json.loads(text) if text else None


def flow_runs(url: str, flow: str) -> list[dict]:
    body = {"flows": {"name": {"any_": [flow]}}}
    return api(url, "/flow_runs/filter", body)


def engine_processes(group: int, flow_run_id: str = "") -> list[int]:
    """PIDs of flow-run processes (prefect.engine) in a process group, of one flow run if given
    (its id or the start of it; a triggered metis-eval may run beside the training run)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            mine = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ
            if b"prefect.engine" in cmd and os.getpgid(int(pid)) == group and mine:
                found.append(int(pid))
        except (OSError, ProcessLookupError):
            continue
    return found


def wait_for(what: str, check, timeout: float, log: Path):
    """Poll `check` until it returns something; a server too busy to answer one poll (SQLite
    under a busy worker) is only a poll that found nothing yet."""
    deadline = time.time() + timeout
    while True:
        try:
            if found := check():
                return found
        except OSError:
            pass
        assert time.time() < deadline, f"timed out waiting for {what}:\n{log.read_text()[-3000:]}"
        time.sleep(2)


def test_the_walkthrough_and_what_it_promises(tiny_model, tmp_path):
    out = tmp_path / "runs"
    overrides = [
        f"output_dir={out}", f"model.path={tiny_model}", "model.dtype=float32", "steps=4",
        "curriculum.batch_prompts=2", "curriculum.pool_multiplier=3", "rollout.n=4",
        "eval.every=1", "eval.max_prompts=4", "eval.samples=2", "eval.audit_prompts=0",
        "eval.at_start=false", "trainer.micro_batch_size=4", "checkpoint_every=1",
    ]  # fmt: skip
    lines = walkthrough()
    script = ["set -euo pipefail"]
    for line in lines:
        if line.startswith("export METIS_OUT="):
            line = f"export METIS_OUT={out}"
        elif line.startswith("export METIS_OVERRIDES="):
            line = f"export METIS_OVERRIDES='{json.dumps(overrides)}'"
        script.append(line)
    script.append("echo WORKER_PID=$!")  # the test stops the worker the walkthrough started
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    # (the worker polls every 10 s, Prefect's default, as in the docs: on SQLite most polls
    # cost a `database is locked` traceback in the server log, docs/deployments.md)
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-cli"),
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}  # fmt: skip
    worker_group = None
    try:
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=600, start_new_session=True,  # the worker: in the group of bash
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        worker_group = os.getpgid(int(re.search(r"WORKER_PID=(\d+)", done.stdout).group(1)))
        state = json.loads((out / "services" / "services.json").read_text())
        prefect_api, mlflow_url = f"{state['prefect']['url']}/api", state["mlflow"]["url"]
        log = out / "services" / "worker.log"

        # the run is killed after its first checkpoint and resumes by itself; its process is
        # found by the flow run's id, which the run folder's name ends with the start of (not
        # through the API, which may stall for a minute here)
        (manifest,) = wait_for(
            "a checkpoint",
            lambda: list(out.glob("*/checkpoints/step-000000/manifest.json")),
            600,
            log,
        )
        flow_run_id = manifest.parents[2].name.rsplit("-", 1)[1]
        (engine,) = wait_for(
            "the flow-run process", lambda: engine_processes(worker_group, flow_run_id), 60, log
        )
        os.kill(engine, signal.SIGKILL)

        # resumed, it is preempted (SIGTERM, as a spot machine's notice or an eviction sends):
        # it finishes the iteration, checkpoints it, ends Preempted and resumes by itself again
        resumed = wait_for(
            "the resumed run",
            lambda: re.search(r"continuing at step (\d+)", log.read_text()),
            600,
            log,
        )
        (engine,) = wait_for(
            "the resumed flow-run process",
            lambda: [p for p in engine_processes(worker_group, flow_run_id) if p != engine],
            60,
            log,
        )
        os.kill(engine, signal.SIGTERM)

        def finished():
            runs = flow_runs(prefect_api, "metis-train")
            return runs if runs and runs[0]["state_type"] == "COMPLETED" else None

        (train_run,) = wait_for("the training run to complete", finished, 900, log)
        history = api(prefect_api, f"/flow_run_states/?flow_run_id={train_run['id']}")
        names = [s["name"] for s in history]
        assert {"Crashed", "Preempted"} <= set(names) and names.count("AwaitingRetry") >= 2
        (run_dir,) = [p for p in out.iterdir() if (p / "run.json").is_file()]
        worker_log = log.read_text()
        assert "SIGTERM: stopping after this iteration" in worker_log
        steps = [int(n) for n in re.findall(r"continuing at step (\d+)", worker_log)]
        assert len(steps) == 2 and steps[1] > steps[0] == int(resumed.group(1)), steps
        con = duckdb.connect(str(run_dir / "history.duckdb"), read_only=True)
        try:  # nothing twice at the replayed steps
            rows = con.execute("SELECT step, count(*) FROM outcomes GROUP BY step ORDER BY step")
            assert rows.fetchall() == [(0, 8), (1, 8), (2, 8), (3, 8)]
        finally:
            con.close()

        # every checkpoint emitted its event; the trigger ran metis-eval on them
        # (the server persists events in batches, a few seconds after they arrive: the last
        # checkpoint's may land after the flow run is Completed)
        def checkpoint_events():
            found = api(
                prefect_api,
                "/events/filter",
                {"filter": {"event": {"name": ["metis.checkpoint.saved"]}}},
            )["events"]
            steps = {e["resource"]["metis.step"] for e in found}
            return steps if steps >= {"0", "1", "2", "3"} else None

        assert wait_for("every checkpoint's event", checkpoint_events, 120, log) == {
            "0", "1", "2", "3"
        }  # fmt: skip

        def completed():
            runs = flow_runs(prefect_api, "metis-eval")
            return [r for r in runs if r["state_type"] == "COMPLETED"]

        evals = wait_for("a triggered evaluation", completed, 600, log)
        assert evals[0]["parameters"]["checkpoint"].startswith(str(run_dir))

        # one training run at a time on this machine: the global concurrency limit
        limits = api(prefect_api, "/v2/concurrency_limits/filter", {})
        assert ("metis-machine", 1) in [(x["name"], x["limit"]) for x in limits]
        assert any(x["name"].startswith("deployment:") for x in limits)  # metis-eval's, 1 at a time

        # artifacts a person reads in the Prefect UI
        keys = {a["key"] for a in api(prefect_api, "/artifacts/filter", {})}
        assert {f"metis-progress-{run_dir.name}", f"metis-summary-{run_dir.name}"} <= keys

        # MLflow: one run (resumed twice, not restarted), each step's metrics once, a version per
        # kept checkpoint, the alias best
        client = MlflowClient(mlflow_url)
        info = json.loads((run_dir / "run.json").read_text())
        mlflow_run = client.get_run(info["mlflow_run_id"])
        assert mlflow_run.info.status == "FINISHED"
        named = f"attributes.run_name = '{run_dir.name}'"
        assert len(client.search_runs([mlflow_run.info.experiment_id], named)) == 1
        points = client.get_metric_history(mlflow_run.info.run_id, "train/reward_mean")
        assert sorted(m.step for m in points) == [0, 1, 2, 3]
        # (registered_versions_kept = 3: step 0's version is pruned, with its weights, unless it
        # is the best)
        versions = client.search_model_versions(f"name = '{run_dir.name}'")
        best = client.get_model_version_by_alias(run_dir.name, "best")
        kept = {v.tags["metis.step"] for v in versions}
        assert kept == {"1", "2", "3", best.tags["metis.step"]}
        copies = [p for p in out.rglob("model.safetensors") if run_dir not in p.parents]
        assert len(copies) == len(versions), copies

        # an active schedule creates its runs
        (nightly,) = [
            d
            for d in api(prefect_api, "/deployments/filter", {})
            if d["name"] == "nightly-uniform-baseline"
        ]
        (schedule,) = nightly["schedules"]
        api(
            prefect_api,
            f"/deployments/{nightly['id']}/schedules/{schedule['id']}",
            {"active": True},
            method="PATCH",
        )
        (schedule,) = api(prefect_api, f"/deployments/{nightly['id']}")["schedules"]
        assert schedule["active"] is True
        body = {"deployments": {"id": {"any_": [nightly["id"]]}}}
        # the scheduler loops every 5 s here (PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS),
        # but a SQLite server busy with the evaluations can hold it up for minutes
        wait_for("scheduled runs", lambda: api(prefect_api, "/flow_runs/filter", body), 420, log)

        # the pages a person sees, as infra/screenshots.py takes them for docs/images
        if shutil.which("chromium"):
            shots = tmp_path / "shots"
            subprocess.run(
                [sys.executable, "infra/screenshots.py", "--run-dir", str(run_dir), "--out", str(shots)],
                cwd=REPO, check=True, timeout=600, capture_output=True,
            )  # fmt: skip
            charts = (shots / "mlflow-run-charts.txt").read_text()
            assert "train/reward_mean" in charts and "eval/avg_at_2" in charts
            assert "best" in (shots / "mlflow-registered-model.txt").read_text()
            assert "step-0003" in (shots / "prefect-flow-run.txt").read_text()  # an iteration
            iteration_page = (shots / "prefect-iteration.txt").read_text()
            assert all(stage in iteration_page for stage in ("judge", "rollout", "checkpoint"))
            assert all((shots / f"{p}.png").stat().st_size > 10_000 for p in
                       ("mlflow-run-charts", "mlflow-registered-model", "prefect-flow-run",
                        "prefect-iteration"))  # fmt: skip
    finally:
        if worker_group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker_group, signal.SIGTERM)
            time.sleep(5)  # the worker cancels its flow runs
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker_group, signal.SIGKILL)
        services.down(out)
    time.sleep(1)
    assert services.status(out) == {"prefect": "down", "mlflow": "down"}
    for entry in ("prefect", "mlflow"):
        pid = state[entry]["pid"]
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
        )
