"""A run killed with SIGKILL mid-training resumes from its latest checkpoint and finishes, with
no duplicated outcome rows and its metrics in the same MLflow run."""

import json
import time

import duckdb
import pytest

from tests.conftest import kill_group, mlflow_run, run_metis, set_args, start_metis
from tests.integration.test_train_flow import B, N, tiny_overrides

pytestmark = pytest.mark.slow

STEPS = 4


def test_resume_after_kill(tiny_model, tmp_path):
    out = tmp_path / "runs"
    overrides = tiny_overrides(tiny_model, out, steps=STEPS, extra=["eval.every=0"])
    args = ["train", *set_args(overrides)]
    proc = start_metis(tmp_path, args, tmp_path / "first.log")
    deadline = time.time() + 600
    latest = None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob("*/checkpoints/latest.json"))
        if found and json.loads(found[0].read_text())["step"] >= 1:
            latest = found[0]
            break
        time.sleep(0.5)
    assert latest is not None, (tmp_path / "first.log").read_text()[-3000:]
    kill_group(proc)  # the flow and its temporary Prefect server, like a preemption
    run_dir = latest.parents[1]
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < STEPS - 1, "the run finished before it could be killed"

    resumed = run_metis(tmp_path, ["train", "--resume", str(run_dir)])
    assert f"continuing at step {killed_at + 1}" in resumed.stdout + resumed.stderr

    con = duckdb.connect(str(run_dir / "history.duckdb"), read_only=True)
    try:
        per_step = dict(con.execute("SELECT step, count(*) FROM outcomes GROUP BY step").fetchall())
        steps = [r[0] for r in con.execute("SELECT step FROM steps ORDER BY step").fetchall()]
    finally:
        con.close()
    assert per_step == {s: B * N for s in range(STEPS)}  # replayed steps replaced, not duplicated
    assert steps == [-1, *range(STEPS)]  # the initial evaluation once, then every step once
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == STEPS - 1

    client, run_id = mlflow_run(run_dir)
    history = client.get_metric_history(run_id, "train/reward_mean")
    assert sorted({m.step for m in history}) == list(range(STEPS))
    assert client.get_run(run_id).info.status == "FINISHED"
    totals = client.get_metric_history(run_id, "cost/rollouts")
    # cumulative counters come back from the checkpoint: the last value counts each step once
    assert max(totals, key=lambda m: (m.step, m.timestamp)).value == STEPS * B * N
