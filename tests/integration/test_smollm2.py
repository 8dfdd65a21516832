"""The real embedded SmolLM2-135M-Instruct through the default config for two iterations."""

import json

import duckdb
import pytest

from metis_core.precision import trainer_has_native_bf16
from tests.conftest import mlflow_run, only_run_dir, run_metis, set_args

pytestmark = pytest.mark.slow


def test_default_config_runs_on_the_embedded_model(tmp_path):
    out = tmp_path / "runs"
    overrides = ["steps=2", "eval.every=0", "eval.max_prompts=8", f"output_dir={out}"]
    run_metis(
        tmp_path, ["train", "--config", "configs/default.yaml", *set_args(overrides)], timeout=1200
    )
    run_dir = only_run_dir(out)
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
    client, run_id = mlflow_run(run_dir)
    metrics = client.get_run(run_id).data.metrics
    assert "eval/avg_at_4" in metrics  # the final evaluation always runs
    # the default precision (auto) is this machine's: bf16 on both sides where it multiplies
    # bf16 natively, fp32 elsewhere, and the run's folder says which
    saved = json.loads((run_dir / "config.json").read_text())
    bf16 = trainer_has_native_bf16()
    assert (saved["trainer"]["precision"], saved["model"]["dtype"]) == (
        ("bf16", "bfloat16") if bf16 else ("fp32", "float32")
    )
    # the trainer scores the sampled tokens as the engine sampled them, at the rollout
    # temperature and under the judgment constraint: to fp32's noise, or within bf16's
    # arithmetic (0.03-0.05 nats/token measured, docs/metis.md)
    tolerance = 0.1 if bf16 else 1e-3
    assert metrics["mismatch/logprob_gap_mean"] < tolerance
    assert metrics["mismatch/judge/logprob_gap_mean"] < tolerance
    assert abs(metrics["mismatch/tis_weight_mean"] - 1.0) < tolerance
    # the judge audit at the final evaluation: 32 random prompts, some of which vary
    for key in ("audit/spearman", "audit/top_b_lift", "audit/nonzero_share", "audit/mae"):
        assert key in metrics, key
    assert 0.0 < metrics["audit/nonzero_share"] < 1.0
    assert metrics["cost/audit_rollouts"] == 2 * 32 * 8  # before training and at the end
    assert metrics["cost/rollouts"] == 2 * 8 * 8  # audit rollouts are not training's
