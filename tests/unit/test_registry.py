"""MLflow as the place to browse a run (a real sqlite MLflow store): checkpoints as registered
model versions with a `best` alias, evaluable as `models:/...`; the pool as dataset inputs; the
experiment opening in MLflow's model-training view; the source commit on the run."""

import json
from pathlib import Path

import pytest
from datasets import Dataset
from mlflow.tracking import MlflowClient

from metis_core.tracking.mlflow_tracker import KIND_TAG, Tracker
from metis_core.tracking.registry import (
    download_version,
    log_datasets,
    model_name,
    register_checkpoint,
    versions_to_prune,
)


@pytest.fixture
def tracker(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker(uri, "metis-test", tmp_path / "mlartifacts")
    t.start("run-a", tags={"metis.run_dir": str(tmp_path / "run-a")})
    yield t
    t.end()


def _export(folder, step):
    """A stand-in HF export: the files a checkpoint's hf/ folder has (tiny)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"step": step}))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return str(folder)


def test_checkpoints_become_versions_with_a_best_alias(tracker, tmp_path):
    run_id = "metis-default-20261122-101010-abcd"
    name = model_name(run_id)
    accuracies = {0: 0.2, 1: 0.5, 2: 0.3}
    for step, acc in accuracies.items():
        version = register_checkpoint(
            tracker, _export(tmp_path / f"s{step}", step), step, run_id, acc
        )
        assert version == str(step + 1)
    # a replayed step (killed after registering, before the checkpoint counted) adds nothing
    assert register_checkpoint(tracker, str(tmp_path / "s1"), 1, run_id, 0.5) == "2"
    client = MlflowClient(tracker.tracking_uri)
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    assert str(client.get_model_version_by_alias(name, "best").version) == "2"

    path, step, run_dir = download_version(
        f"models:/{name}@best", tracker.tracking_uri, str(tmp_path / "dl")
    )
    assert json.loads(Path(path, "config.json").read_text()) == {"step": 1} and step == 1
    assert run_dir == str(tmp_path / "run-a")
    path, step, _ = download_version(
        f"models:/{name}/latest", tracker.tracking_uri, str(tmp_path / "dl")
    )
    assert step == 2 and json.loads(Path(path, "config.json").read_text()) == {"step": 2}
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [f"{name}-v2", f"{name}-v3"]
    # the weights live in MLflow: gone from the run folder, still downloadable
    _, step, _ = download_version(f"models:/{name}/1", tracker.tracking_uri, str(tmp_path / "dl"))
    assert step == 0


def test_old_versions_are_pruned_with_their_weights_but_best_stays(tracker, tmp_path):
    run_id = "metis-default-20261122-101010-prune"
    name = model_name(run_id)
    client = MlflowClient(tracker.tracking_uri)
    accuracies = [0.2, 0.6, 0.3, 0.1, 0.4]  # step 1 (version 2) stays the best
    for step, acc in enumerate(accuracies):
        register_checkpoint(tracker, _export(tmp_path / f"s{step}", step), step, run_id, acc, 2)
    kept = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    assert kept == [2, 4, 5]
    assert str(client.get_model_version_by_alias(name, "best").version) == "2"
    # the pruned versions' weights are gone from the artifact store, the kept ones are there
    weights = sorted((tmp_path / "mlartifacts").rglob("model.safetensors"))
    steps = sorted(json.loads((w.parent / "config.json").read_text())["step"] for w in weights)
    assert steps == [1, 3, 4]
    models = client.search_logged_models(experiment_ids=[tracker.experiment_id])
    assert sorted(m.name for m in models) == [f"{name}-step-{s:06d}" for s in (1, 3, 4)]
    # keep = 0 keeps everything
    register_checkpoint(tracker, _export(tmp_path / "s5", 5), 5, run_id, 0.0, 0)
    assert len(client.search_model_versions(f"name = '{name}'")) == 4


@pytest.mark.parametrize(
    ("versions", "best", "keep", "pruned"),
    [
        ([1, 2, 3, 4], None, 2, [1, 2]),
        ([1, 2, 3, 4], 1, 2, [2]),
        ([1, 2, 3, 4], 4, 2, [1, 2]),
        ([4, 1, 3], 3, 1, [1]),
        ([1, 2], None, 5, []),
    ],
)
def test_which_versions_are_pruned(versions, best, keep, pruned):
    assert versions_to_prune(versions, best, keep) == pruned


def test_the_pool_is_logged_as_dataset_inputs(tracker, tmp_path):
    pool = Dataset.from_list(
        [{"prompt_id": f"p{i}", "prompt": f"q{i}", "answer": "secret", "task": "t",
          "domain": "math", "difficulty": "1", "split": "heldout" if i % 4 == 0 else "train"}
         for i in range(12)]
    )  # fmt: skip
    log_datasets(tracker, pool, str(tmp_path / "pool.parquet"))
    run = MlflowClient(tracker.tracking_uri).get_run(tracker.run_id)
    found = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(found) == {"pool-train", "pool-heldout"}
    contexts = {name: [t.value for t in d.tags] for name, d in found.items()}
    assert contexts == {"pool-train": ["training"], "pool-heldout": ["evaluation"]}
    assert json.loads(found["pool-heldout"].dataset.profile)["num_rows"] == 3
    assert "secret" not in found["pool-train"].dataset.schema  # answers stay out


def test_experiment_kind_and_source_tags(tracker):
    client = MlflowClient(tracker.tracking_uri)
    assert client.get_experiment(tracker.experiment_id).tags[KIND_TAG] == "custom_model_development"
    tags = client.get_run(tracker.run_id).data.tags
    assert tags["mlflow.source.name"] == "metis train"
    assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run from a git checkout


def test_metric_names_are_valid_for_every_store(tracker):
    tracker.log_metrics({"eval/my task:v2/avg_at_4": 0.5, "train/reward_mean": 0.25}, 3)
    metrics = MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).data.metrics
    assert metrics == {"eval/my_task_v2/avg_at_4": 0.5, "train/reward_mean": 0.25}
