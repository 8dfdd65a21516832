"""Checkpoints a resume can trust: a half-written, truncated or unloadable one is passed over for
the newest complete one; MLflow logging replayed after a kill keeps one value per metric and step."""

import json
from pathlib import Path

import pytest

from metis_core import checkpoints
from metis_core.checkpoints import CheckpointError


def save_with(payload: bytes):
    def save(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.pt").write_bytes(payload)
        (folder / "hf").mkdir(exist_ok=True)
        (folder / "hf" / "config.json").write_text("{}")

    return save


def loaded_steps(directory: Path) -> list[int]:
    seen = []
    checkpoints.restore(directory, lambda c: seen.append(c.step))
    return seen


def test_the_newest_complete_checkpoint_is_restored_and_old_ones_pruned(tmp_path):
    for step in range(4):
        checkpoints.write(tmp_path, step, save_with(b"x" * (step + 1)), keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000002", "step-000003"]
    assert json.loads((tmp_path / "latest.json").read_text()) == {"tag": "step-000003", "step": 3}
    assert loaded_steps(tmp_path) == [3]


def test_a_checkpoint_killed_while_saving_is_never_picked(tmp_path):
    checkpoints.write(tmp_path, 0, save_with(b"old"))

    def killed(folder: Path) -> None:
        save_with(b"half")(folder)
        raise KeyboardInterrupt  # stands for the kill: the save never returns

    with pytest.raises(KeyboardInterrupt):
        checkpoints.write(tmp_path, 1, killed)
    assert (tmp_path / "step-000001" / "weights.pt").is_file()
    assert loaded_steps(tmp_path) == [0]
    # rewriting a complete checkpoint withdraws it until the rewrite finishes
    with pytest.raises(KeyboardInterrupt):
        checkpoints.write(tmp_path, 0, killed)
    with pytest.raises(CheckpointError, match="none is complete"):
        loaded_steps(tmp_path)


def test_truncated_or_missing_files_fall_back_to_the_previous_checkpoint(tmp_path, caplog):
    checkpoints.write(tmp_path, 0, save_with(b"a" * 10))
    checkpoints.write(tmp_path, 1, save_with(b"b" * 10))
    (tmp_path / "step-000001" / "weights.pt").write_bytes(b"b" * 3)  # truncated by hand
    assert loaded_steps(tmp_path) == [0]
    assert "weights.pt has 3 bytes, not 10" in caplog.text
    (tmp_path / "step-000000" / "hf" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="none is complete"):
        loaded_steps(tmp_path)


def test_a_checkpoint_that_does_not_load_falls_back(tmp_path):
    checkpoints.write(tmp_path, 0, save_with(b"good"))
    checkpoints.write(tmp_path, 1, save_with(b"evil"))
    tried = []

    def load(c: checkpoints.Checkpoint) -> None:
        tried.append(c.step)
        if (c.path / "weights.pt").read_bytes() == b"evil":
            raise ValueError("unpickling error")

    assert checkpoints.restore(tmp_path, load).step == 0
    assert tried == [1, 0]
    with pytest.raises(CheckpointError, match="step-000000: boom"):
        checkpoints.restore(tmp_path, lambda c: (_ for _ in ()).throw(ValueError("boom")))


def test_a_run_without_checkpoints_starts_fresh(tmp_path):
    assert checkpoints.restore(tmp_path / "checkpoints", lambda c: None) is None


def test_mlflow_keeps_one_value_per_metric_and_step_across_a_replay(tmp_path):
    from metis_core.tracking.mlflow_tracker import Tracker, default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    first = Tracker(uri, "replay", tmp_path / "artifacts")
    run_id = first.start("r")
    first.log_metrics({"a": 1.0, "b": 1.0}, 0)
    first.log_metrics({"a": 2.0}, 1)  # killed here: b never logged at step 1
    resumed = Tracker(uri, "replay", tmp_path / "artifacts")
    resumed.start("r", run_id)
    resumed.log_metrics({"a": 9.0, "b": 2.0}, 1)  # the replayed step 1
    resumed.log_metrics({"a": 3.0, "b": 3.0}, 2)
    resumed.log_metrics({"a": 9.0}, 2)  # in-process replays are filtered too
    history = {
        key: [(m.step, m.value) for m in resumed.client.get_metric_history(run_id, key)]
        for key in ("a", "b")
    }
    assert sorted(history["a"]) == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert sorted(history["b"]) == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert resumed.find("mlflow.runName", "r") == run_id


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint(tmp_path):
    import errno

    checkpoints.write(tmp_path, 0, save_with(b"a" * 10))

    def disk_full(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.pt").write_bytes(b"b" * 4)  # what fitted
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match="step-000001 could not be written: no space left"):
        checkpoints.write(tmp_path, 1, disk_full)
    assert not (tmp_path / "step-000001").exists()  # part-written files removed
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 0
    assert loaded_steps(tmp_path) == [0]


def test_a_full_disk_reported_by_the_writer_s_own_message_is_named(tmp_path):
    """safetensors says it in its message, not with an OSError."""

    def disk_full(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        raise RuntimeError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    with pytest.raises(CheckpointError, match="rerun the same command"):
        checkpoints.write(tmp_path, 0, disk_full)


def test_other_failures_while_saving_are_raised_as_they_are(tmp_path):
    def broken(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.pt").write_bytes(b"b")
        raise ValueError("a bug in a writer")

    with pytest.raises(ValueError, match="a bug in a writer"):
        checkpoints.write(tmp_path, 0, broken)
    assert checkpoints.resumable(tmp_path) == []  # never marked complete


def test_a_disk_that_fills_at_the_manifest_is_named_too(tmp_path, monkeypatch):
    """Seen on a real 150 MB filesystem: the weights fitted, the manifest did not."""
    import errno

    checkpoints.write(tmp_path, 0, save_with(b"a" * 10))
    real = checkpoints.write_json

    def write_json(path: Path, data: dict) -> None:
        if path.name == checkpoints.MANIFEST:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoints, "write_json", write_json)
    with pytest.raises(CheckpointError, match="step-000001 could not be written"):
        checkpoints.write(tmp_path, 1, save_with(b"b" * 10))
    assert not (tmp_path / "step-000001").exists()
    assert loaded_steps(tmp_path) == [0]
