"""Opening a run: a start that fails leaves no MLflow run RUNNING."""

import json

import pytest

from metis_core.config import RunConfig
from metis_core.launch import open_run, prepare_run_dir
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
