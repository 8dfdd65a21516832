"""The real embedded SmolLM2-135M-Instruct through the default config for two iterations."""

import json
import subprocess

import duckdb
import pytest

from tests.conftest import REPO, metis_command, metis_env

pytestmark = pytest.mark.slow


def test_default_config_runs_on_the_embedded_model(tmp_path):
    out = tmp_path / "runs"
    overrides = ["steps=2", "eval.every=0", "eval.max_prompts=8", f"output_dir={out}"]
    args = ["train", "--config", "configs/default.yaml"] + [
        a for o in overrides for a in ("--set", o)
    ]
    done = subprocess.run(
        metis_command(*args),
        cwd=REPO,
        env=metis_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    (run_dir,) = [p for p in out.iterdir() if (p / "config.json").is_file()]
    con = duckdb.connect(str(run_dir / "history.duckdb"), read_only=True)
    try:
        rows, mean_reward = con.execute("SELECT count(*), avg(reward) FROM outcomes").fetchone()
        parsed = con.execute("SELECT bool_and(parsed) FROM judgments").fetchone()[0]
    finally:
        con.close()
    assert rows == 2 * 8 * 8
    # the easy part of the default pool is within the model's reach: some rewards are 1
    assert 0.0 < mean_reward < 1.0
    assert parsed  # constrained decoding: every judgment parses, even for a 135M model
    info = json.loads((run_dir / "run.json").read_text())
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(info["tracking_uri"]).get_run(info["mlflow_run_id"]).data.metrics
    assert "eval/avg_at_4" in metrics  # the final evaluation always runs
