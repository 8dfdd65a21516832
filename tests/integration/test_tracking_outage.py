"""An MLflow server that goes down mid-run and comes back: training goes on, the metrics of the
outage reach MLflow when it answers again, once each, and so do the model versions of its
checkpoints; unreachable at start, a clear error."""

import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from metis_core.tracking import mlflow_tracker
from metis_core.tracking.mlflow_tracker import Tracker, TrackingUnavailable
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def serve(tmp_path, port):
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--default-artifact-root", (tmp_path / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def stop(proc):
    import os
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def retry_at_once(monkeypatch):
    """A call during an outage fails at once, and the next one tries MLflow again."""
    monkeypatch.setattr(mlflow_tracker, "RETRY_AFTER_S", 0.0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def tracker_on(port, tmp_path):
    return Tracker(f"http://127.0.0.1:{port}", "outage", tmp_path / "artifacts")


def test_metrics_of_an_outage_arrive_once_when_mlflow_is_back(tmp_path, retry_at_once):
    port = free_port()
    server = serve(tmp_path, port)
    try:
        tracker = tracker_on(port, tmp_path)
        run_id = tracker.start("r")
        tracker.log_metrics({"loss": 0.0}, 0)
        stop(server)
        for step in (1, 2):  # MLflow is down: nothing raises, the metrics wait
            tracker.log_metrics({"loss": float(step)}, step)
            tracker.log_table([{"a": 1}], f"samples/step_{step}.json")
            tracker.set_tag("latest", str(step))
        assert tracker.pending_steps == [1, 2]
        server = serve(tmp_path, port)
        tracker.log_metrics({"loss": 3.0}, 3)
        assert tracker.pending_steps == []
        history = tracker.client.get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(4)]
        tracker.end("FINISHED")
        assert tracker.client.get_run(run_id).info.status == "FINISHED"
    finally:
        stop(server)


def test_checkpoints_of_an_outage_become_model_versions_when_mlflow_is_back(
    tmp_path, retry_at_once, caplog
):
    """A checkpoint taken while MLflow is down gets its model version at the next checkpoint
    after MLflow is back, unless its export was pruned meanwhile (then a warning says so)."""
    from metis_core.tracking.registry import STEP_TAG, model_name
    from tests.unit.test_registry import _export

    port = free_port()
    server = serve(tmp_path, port)
    run = "metis-outage-20261202-000000-abcd"
    try:
        tracker = tracker_on(port, tmp_path)
        tracker.start("r")
        exports = {step: _export(tmp_path / f"s{step}", step) for step in range(4)}
        assert tracker.register_checkpoint(exports[0], 0, run, 0.1) == "1"
        stop(server)
        for step in (1, 2):  # MLflow is down: nothing raises, the versions wait
            assert tracker.register_checkpoint(exports[step], step, run, 0.2) is None
        assert tracker.pending_versions == [1, 2]
        shutil.rmtree(exports[1])  # pruned by checkpoint retention before MLflow is back
        server = serve(tmp_path, port)
        assert tracker.register_checkpoint(exports[3], 3, run, 0.3) == "3"
        assert tracker.pending_versions == []
        versions = tracker.client.search_model_versions(f"name = '{model_name(run)}'")
        assert sorted(int(v.tags[STEP_TAG]) for v in versions) == [0, 2, 3]
        assert "checkpoint of step 1 was removed" in caplog.text
        tracker.end("FINISHED")
    finally:
        stop(server)


def test_a_checkpoint_mlflow_never_took_is_named_at_the_end(tmp_path, retry_at_once, caplog):
    from tests.unit.test_registry import _export

    port = free_port()
    server = serve(tmp_path, port)
    try:
        tracker = tracker_on(port, tmp_path)
        tracker.start("r")
    finally:
        stop(server)
    export = _export(tmp_path / "s5", 5)
    assert tracker.register_checkpoint(export, 5, "metis-outage-run", None) is None
    tracker.end("FINISHED")  # one last try, then a warning naming the step
    assert tracker.pending_versions == [5]
    assert "the checkpoints of steps [5] have no model version" in caplog.text


def test_an_unreachable_server_at_start_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()
    with pytest.raises(TrackingUnavailable, match=f"MLflow at http://127.0.0.1:{port} does not"):
        Tracker(f"http://127.0.0.1:{port}", "outage", tmp_path / "artifacts")
