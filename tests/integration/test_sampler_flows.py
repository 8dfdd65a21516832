"""The PCL sampler through the real flow on the tiny model: prompt features from the DeepSpeed
trainer, value-model passes charged, its state in the DeepSpeed checkpoint."""

import json

import pytest
import torch

from tests.conftest import B, M, N, mlflow_run, only_run_dir, run_metis, set_args, tiny_overrides

pytestmark = pytest.mark.integration


def test_pcl_reads_policy_features_and_is_charged_for_them(tiny_model, tmp_path):
    out = tmp_path / "runs"
    overrides = tiny_overrides(
        tiny_model, out, extra=["curriculum.sampler=pcl", "eval.audit_prompts=0"]
    )
    run_metis(tmp_path, ["train", *set_args(overrides)])
    run_dir = only_run_dir(out)
    hidden = json.loads((tiny_model / "config.json").read_text())["hidden_size"]

    for step in (0, 1):
        selection = json.loads((run_dir / "steps" / f"{step:06d}" / "selection.json").read_text())
        assert set(selection["features"]) == set(selection["prompt_ids"])
        assert all(len(f) == hidden for f in selection["features"].values())
        assert selection["cost"]["value_passes"] == B * M

    client, run_id = mlflow_run(run_dir)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["cost/value_passes"] == 2 * B * M
    assert metrics["cost/value_tokens"] > 2 * B * M
    assert metrics["cost/judgment_tokens"] == 0  # pcl asks for no judgments
    assert metrics["cost/spent_tokens"] == metrics["cost/generated_tokens"]
    assert metrics["sampler/pcl/fits"] == 2 and metrics["sampler/pcl/buffer_size"] == 2 * B
    assert [m.value for m in client.get_metric_history(run_id, "cost/step/rollouts")] == [B * N] * 2

    (state_file,) = (run_dir / "checkpoints" / "step-000001").glob("*model_states.pt")
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    assert len(state["sampler"]["buffer_y"]) == 2 * B
    assert len(state["sampler"]["weights"]) == hidden
    assert state["totals"]["value_passes"] == 2 * B * M
