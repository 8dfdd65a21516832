"""A run interrupted at chosen and random instants (SIGKILL at its first judge, while writing a
checkpoint, after logging to MLflow, inside the DuckDB transaction of `record`, in the update,
as it ends (MLflow ended, run.json not yet finished), and 3-40 s into its last attempt; SIGTERM
mid-step), continued each time by
rerunning its command, ends identical to a run never interrupted: same outcome rows and
judgments, the same weights and one MLflow value per metric per step, equal to the unkilled
run's up to float32's last bits (1e-6)."""

import json
import random
import signal
import time

import pytest

from bench.kill_harness import compare, run_to_end, start, stop_group
from tests.conftest import mlflow_run

pytestmark = pytest.mark.slow


def wait_for(path, proc, timeout=600):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before it got there"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_interrupted_run_equals_an_uninterrupted_one(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    run_to_end(tiny_model, runs, "reference", [], tmp_path / "reference.log")
    log = tmp_path / "killed.log"

    # SIGKILL as the first judge starts (after the initial evaluation, before any checkpoint)
    proc = start(tiny_model, runs, "killed", log, kill_at="judge@0")
    assert proc.wait(timeout=600) == -signal.SIGKILL
    stop_group(proc)

    # SIGTERM mid-step: the step finishes, is checkpointed, and the run exits 143
    proc = start(tiny_model, runs, "killed", log)
    wait_for(runs / "killed" / "steps" / "000000" / "rollouts.json", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) == 143, log.read_text()[-3000:]
    stop_group(proc)
    run_dir = runs / "killed"
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 0
    client, mlflow_id = mlflow_run(run_dir)
    assert client.get_run(mlflow_id).info.status == "KILLED"

    # SIGKILLs at failpoints, each attempt the same command as before; the last one finishes
    proc = start(tiny_model, runs, "killed", log, kill_at="checkpoint-write@1")
    assert proc.wait(timeout=600) == -signal.SIGKILL
    stop_group(proc)
    rollouts = run_dir / "steps" / "000001" / "rollouts.json"
    first_try = rollouts.stat().st_mtime_ns
    # then a kill at a random instant of the last attempt's start-up or step (printed, to replay it)
    delay = round(random.uniform(3, 40), 1)
    print(f"random kill after {delay} s")
    # "finished@2": the run has ended in MLflow but run.json does not say finished yet
    later = ["mlflow-logged@1", "record-transaction@2", "update@2", "finished@2", delay]
    landed = run_to_end(tiny_model, runs, "killed", later, log)
    assert landed >= 4  # the failpoints; the random kill may come after the run finished
    # step 1 was replayed twice more, its rollouts served from the stage cache beside the run
    assert rollouts.stat().st_mtime_ns == first_try
    assert list((run_dir / ".prefect-results").glob("*-step000001-rollout"))
    text = log.read_text()
    assert "checkpoint" in text and "is not usable (no manifest" in text  # the half-written one
    assert text.count("continuing at step 1") == 3  # SIGTERM's checkpoint, then twice more
    assert "continuing at step 3" in text  # killed as it ended: the rerun ends it again

    result = compare(runs / "reference", run_dir)
    assert result == {
        "outcomes_identical": True,
        "judgments_identical": True,
        "steps_identical": True,
        "final_step": 2,
        "max_weight_gap": result["max_weight_gap"],
        "mlflow_duplicates": {},
        "mlflow_missing": {},
        "mlflow_values_differ": [],
    }
    # the same weights, to float32's last bits (a resumed process may round a sum differently)
    assert result["max_weight_gap"] <= 1e-6
    assert client.get_run(mlflow_id).info.status == "FINISHED"
    # replayed steps served from the stage cache still report what their stages cost
    judge_steps = [m.step for m in client.get_metric_history(mlflow_id, "time/judge_s")]
    assert sorted(judge_steps) == [0, 1, 2]

    # the same command once more: a finished run is left as it is
    proc = start(tiny_model, runs, "killed", log)
    assert proc.wait(timeout=600) == 0
    stop_group(proc)
    assert "already finished all its steps" in log.read_text()
