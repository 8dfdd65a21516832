"""`metis compare` on the tiny model: 2 samplers x 2 seeds x 2 steps through the real flow,
killed once its first run has finished, then resumed by running the same command again."""

import json
import time

import pandas as pd
import pytest

from tests.conftest import (
    B,
    M,
    N,
    kill_group,
    mlflow_run,
    run_metis,
    set_args,
    start_metis,
    tiny_overrides,
)

pytestmark = pytest.mark.slow

SAMPLERS = ["uniform", "dapo_dynamic"]
SEEDS = ["0", "1"]


def _finished(run_dir):
    info = run_dir / "run.json"
    return info.is_file() and json.loads(info.read_text()).get("finished", False)


def test_compare_resumes_after_a_kill(tiny_model, tmp_path):
    out = tmp_path / "cmp"
    overrides = tiny_overrides(tiny_model, tmp_path / "runs", extra=["eval.audit_prompts=0"])
    args = [
        "compare",
        *set_args(overrides),
        "--samplers",
        *SAMPLERS,
        "--seeds",
        *SEEDS,
        "--output",
        str(out),
    ]
    proc = start_metis(tmp_path, args, tmp_path / "first.log")
    first = out / "uniform-seed0"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not _finished(first):
        time.sleep(0.5)
    assert _finished(first), (tmp_path / "first.log").read_text()[-3000:]
    kill_group(proc)  # the comparison, its runs and its Prefect server
    assert not (out / "comparison.md").exists(), "the comparison ended before it could be killed"
    kept = (first / "history.duckdb").stat().st_mtime_ns

    done = run_metis(tmp_path, args)
    assert "uniform-seed0 finished earlier; not rerun" in done.stdout + done.stderr
    assert (first / "history.duckdb").stat().st_mtime_ns == kept
    children = [out / f"{s}-seed{seed}" for seed in SEEDS for s in SAMPLERS]
    assert all(_finished(c) for c in children)

    # same pool and held-out split for every run; each its own sampler and seed
    pools = [pd.read_parquet(c / "pool.parquet") for c in children]
    assert all(p[["prompt_id", "split"]].equals(pools[0][["prompt_id", "split"]]) for p in pools)
    configs = [json.loads((c / "config.json").read_text()) for c in children]
    assert {(c["curriculum"]["sampler"], c["seed"]) for c in configs} == {
        (s, int(seed)) for s in SAMPLERS for seed in SEEDS
    }

    summary = json.loads((out / "comparison.json").read_text())
    assert set(summary["table"]) == set(SAMPLERS)
    for row in summary["table"].values():
        assert row["seeds"] == 2
        assert row["spent_tokens"] > 0
    assert (out / "comparison.png").stat().st_size > 10_000
    assert "| dapo_dynamic |" in (out / "comparison.md").read_text()

    # MLflow: one parent, four children under it, the table and the plot on the parent
    client, _ = mlflow_run(first)
    parent = json.loads((out / "compare.json").read_text())["mlflow_run_id"]
    for c in children:
        _, run_id = mlflow_run(c)
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent
        assert client.get_run(run_id).info.status == "FINISHED"
    # the tiny model solves nothing: every DAPO round is discarded, all of it charged
    _, dapo_run = mlflow_run(out / "dapo_dynamic-seed0")
    dapo = client.get_run(dapo_run).data.metrics
    assert dapo["train/reward_mean"] == 0.0
    assert dapo["cost/discarded_rollouts"] == 2 * (B * M - B) * N  # 2 steps, 3 rounds of B
    assert (
        dapo["sampler/dapo_dynamic/rounds"] == M and dapo["sampler/dapo_dynamic/batch_filled"] == 0
    )
    assert dapo["cost/spent_tokens"] > dapo["cost/generated_tokens"]
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"comparison.md", "comparison.json", "comparison.png"} <= artifacts
    assert "uniform/best_accuracy" in client.get_run(parent).data.metrics
    assert client.get_run(parent).info.status == "FINISHED"
