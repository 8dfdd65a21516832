"""Opening a run: a start that fails leaves no MLflow run RUNNING; nor does a kill between a run's
last step and its end reaching MLflow; a kill before the run's MLflow id reached run.json leaves
one MLflow run, not two."""

import json

import pytest

from metis_core.config import RunConfig
from metis_core.config_loading import ConfigError
from metis_core.launch import (
    close_finished_run,
    mark_finished,
    named_run_dir,
    open_run,
    prepare_run_dir,
)
from metis_core.run import write_json
from metis_core.tracking.mlflow_tracker import Tracker, tracking_uri_for
from tests.conftest import mlflow_run


def test_a_failed_start_marks_the_mlflow_run_failed(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = RunConfig.model_validate(
        {"model": {"path": str(tiny_model)}, "output_dir": str(tmp_path)}
    )
    run_dir = prepare_run_dir(cfg, "broken")
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["path"] = str(tmp_path / "no-such-model")  # the weights went missing
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        open_run(run_dir)
    client, run_id = mlflow_run(run_dir)
    assert client.get_run(run_id).info.status == "FAILED"


def test_a_finished_run_left_running_is_ended(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = RunConfig.model_validate(
        {"model": {"path": str(tiny_model)}, "output_dir": str(tmp_path)}
    )
    run_dir = prepare_run_dir(cfg, "killed-at-its-end")
    uri = tracking_uri_for(cfg)
    tracker = Tracker(uri, cfg.experiment, tmp_path / "mlartifacts")
    started = tracker.start("killed-at-its-end")
    write_json(run_dir / "run.json", {"mlflow_run_id": started, "tracking_uri": uri})
    mark_finished(run_dir)  # ... with its MLflow run never ended (MLflow was down at the end)
    client, run_id = mlflow_run(run_dir)
    assert client.get_run(run_id).info.status == "RUNNING"

    close_finished_run(run_dir)
    assert client.get_run(run_id).info.status == "FINISHED"

    client.set_terminated(run_id, "FAILED")  # an ended run keeps the status MLflow has
    close_finished_run(run_dir)
    assert client.get_run(run_id).info.status == "FAILED"


def test_a_finished_run_whose_mlflow_server_is_down_is_left_as_it_is(
    tiny_model, tmp_path, caplog, monkeypatch
):
    from tests.conftest import free_port

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = RunConfig.model_validate(
        {"model": {"path": str(tiny_model)}, "output_dir": str(tmp_path)}
    )
    run_dir = prepare_run_dir(cfg, "finished-elsewhere")
    down = f"http://127.0.0.1:{free_port()}"
    write_json(run_dir / "run.json", {"mlflow_run_id": "abc", "tracking_uri": down})
    mark_finished(run_dir)
    close_finished_run(run_dir)  # says so, does not raise
    assert "could not check finished-elsewhere's MLflow run" in caplog.text


def test_a_run_killed_before_it_wrote_its_mlflow_run_id_keeps_one_mlflow_run(
    tiny_model, tmp_path, monkeypatch
):
    from metis_core import launch

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = RunConfig.model_validate(
        {"model": {"path": str(tiny_model)}, "output_dir": str(tmp_path), "system_metrics": False}
    )
    run_dir = prepare_run_dir(cfg, "killed-early")

    class Killed(BaseException):
        """What a SIGKILL right after MLflow made the run leaves: its id not in run.json."""

    start = Tracker.start

    def start_then_killed(self, *args, **kwargs):
        start(self, *args, **kwargs)
        raise Killed

    monkeypatch.setattr(Tracker, "start", start_then_killed)
    with pytest.raises(Killed):
        open_run(run_dir)
    assert "mlflow_run_id" not in json.loads((run_dir / "run.json").read_text())

    monkeypatch.setattr(Tracker, "start", start)
    monkeypatch.setattr(launch, "_start_parts", lambda *parts: "engine, trainer, store")
    assert open_run(run_dir) == "engine, trainer, store"  # the rerun of the same command
    client, mlflow_id = mlflow_run(run_dir)
    experiment = client.get_experiment_by_name(cfg.experiment).experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [mlflow_id]


def test_a_run_name_taken_by_another_config_is_refused_naming_what_differs(tiny_model, tmp_path):
    """`metis train --run-id NAME` continues run NAME only with the config that started it; with
    another it says which settings differ and how to go on, and leaves the run as it was."""
    settings = {"model": {"path": str(tiny_model)}, "output_dir": str(tmp_path)}
    run_dir = named_run_dir(RunConfig.model_validate(settings), "taken")
    saved = (run_dir / "config.json").read_text()
    assert named_run_dir(RunConfig.model_validate(settings), "taken") == run_dir  # same: continues
    other = RunConfig.model_validate(settings | {"seed": 3, "steps": 5})
    with pytest.raises(ConfigError, match=r"run 'taken' exists with another config \(seed, steps "
                       r"differ\); continue it with `metis train --resume .*taken`"):  # fmt: skip
        named_run_dir(other, "taken")
    assert (run_dir / "config.json").read_text() == saved
