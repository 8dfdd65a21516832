"""MLflow: one run per training run. Uses MlflowClient with an explicit run id, so it works from
any thread a Prefect task runs in, and a resumed run logs into the same MLflow run.

Logging is idempotent per (metric, step): a resumed run replays the steps after its checkpoint,
some of which MLflow may already hold (killed after logging, before the checkpoint), so a metric
is logged at a step only if MLflow holds nothing for it at that step or later. The first value
logged for a step stands (a replay computes the same one: runs are reproducible).

An MLflow server that becomes unreachable mid-run does not stop training: metrics wait in memory,
in order, and go out when it answers again (tried at most once a minute); so do the model
versions of checkpoints taken meanwhile (at the next checkpoint, or at the run's end, as long as
the checkpoint's export is still on disk); artifacts and tags of the outage are skipped with a
warning. Every step's metrics are also in the run's DuckDB `steps` table, which stays the record
if the process ends before MLflow is back. Errors that are not an outage (a bad key, a deleted
run) still raise. Unreachable at start, it fails before any model loads, naming the URI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from metis_core.config import RunConfig

log = logging.getLogger(__name__)

RETRY_AFTER_S = 60.0
"""After a failed call, how long MLflow is left alone before the next try."""
_NOT_AN_OUTAGE = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"}


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server did not answer when the run started."""


def _is_outage(error: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code not in _NOT_AN_OUTAGE
    return isinstance(error, (OSError, ConnectionError, TimeoutError))


KIND_TAG = "mlflow.experimentKind"


@dataclass(frozen=True)
class PendingVersion:
    """A checkpoint to register as a model version once MLflow answers again."""

    hf_dir: str
    step: int
    run_id: str
    accuracy: float | None
    keep: int


def metric_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


def source_tags() -> dict[str, str]:
    """MLflow's source tags for a new run: the entry point and, in a git checkout, the commit."""
    tags = {"mlflow.source.name": "metis train", "mlflow.source.type": "LOCAL"}
    repo = Path(__file__).resolve().parents[2]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if len(commit) == 40:
            tags["mlflow.source.git.commit"] = commit
    return tags


def create_sqlite_store(tracking_uri: str) -> None:
    """Create the SQLite file of a `sqlite:///PATH` tracking URI whole, if it does not exist yet.

    MLflow builds a new SQLite store table by table and then migration by migration, each step
    committed on its own (SQLite's driver commits DDL as it goes). A process killed in that second
    or two leaves a file that no later process can open ("table trace_info already exists"), and
    every run of the output folder logs there. So the store is built under a temporary name beside
    it and linked into place complete; whoever links first wins."""
    if not tracking_uri.startswith("sqlite:///") or "?" in tracking_uri:
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.name in ("", ":memory:") or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for left in path.parent.glob(f".{path.name}.new-*"):  # from a process killed while building
        with contextlib.suppress(OSError):
            if time.time() - left.stat().st_mtime > 600:
                left.unlink()
    # a name of its own each time: MLflow caches a store per URI
    building = path.with_name(f".{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    mlflow_environment(tracking_uri)
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{building}")  # builds the store
        with contextlib.suppress(AttributeError):  # (every step is committed already)
            client._tracking_client.store.engine.dispose()  # its idle connection closed
        try:
            os.link(building, path)
        except FileExistsError:  # another process's store is in place
            pass
        except OSError:  # a file system without hard links: a rename, unless one is there
            if not path.exists():
                building.rename(path)
    finally:
        building.unlink(missing_ok=True)


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def tracking_uri_for(cfg: RunConfig, recorded: str | None = None) -> str:
    """Where a run logs: MLFLOW_TRACKING_URI, else the store its MLflow run was created in
    (`recorded`, from run.json), else the config's `tracking_uri`, else a sqlite file under the
    output dir. Training, resuming and `metis eval` all decide it here."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or recorded
        or cfg.tracking_uri
        or default_tracking_uri(cfg.output_dir)
    )


def mlflow_environment(tracking_uri: str | None = None) -> None:
    """MLflow's variables, set before it is imported."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        # MLflow's defaults retry a refused call for minutes; a training step should not wait
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path) -> None:
        create_sqlite_store(tracking_uri)
        mlflow_environment(tracking_uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self._pending: list[tuple[dict[str, float], int]] = []
        """Metrics MLflow could not take yet, oldest first."""
        self._pending_versions: list[PendingVersion] = []
        """Checkpoints whose model version MLflow could not take yet, oldest first."""
        self.outages = 0
        """Calls skipped or failed because MLflow was unreachable, so far."""
        self._quiet_until = 0.0
        try:
            found = self.client.get_experiment_by_name(experiment)
        except Exception as err:
            if not _is_outage(err):
                raise
            raise TrackingUnavailable(
                f"MLflow at {tracking_uri} does not answer ({str(err)[:300]}); start it, or unset "
                "MLFLOW_TRACKING_URI / tracking_uri to log to a local file"
            ) from err
        if found is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_root.resolve().as_uri()
            )
        else:
            self.experiment_id = found.experiment_id
        if found is None or KIND_TAG not in found.tags:  # else MLflow 3 opens its GenAI view
            self.client.set_experiment_tag(self.experiment_id, KIND_TAG, "custom_model_development")
        self.run_id: str | None = None
        self._monitor: Any = None
        self._logged_through: dict[str, int] = {}
        """metric -> the last step MLflow holds a value at."""

    def start(
        self,
        run_name: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = False,
    ) -> str:
        """Start a new run, or reopen `run_id` (resume); with `system_metrics`, MLflow samples
        CPU, memory, disk (and GPU) every 10 s until `end`."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            latest = self.client.get_run(run_id).data.to_proto().metrics
            self._logged_through = {m.key: m.step for m in latest}
        else:
            tags = {**source_tags(), **(tags or {})}
            self.run_id = self.client.create_run(
                self.experiment_id, run_name=run_name, tags=tags
            ).info.run_id
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=run_id is not None, tracking_uri=self.tracking_uri
            )
            self._monitor.start()
        return self.run_id

    def find(self, tag: str, value: str) -> str | None:
        """The id of this experiment's run tagged `tag=value` (a run created just before a kill,
        whose id never reached run.json), or None."""
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1
        )
        return found[0].info.run_id if found else None

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log at `step` (queued while MLflow is unreachable; see the module docstring). Names
        keep only what every MLflow store accepts (letters, digits, `_ - . /`; a task named
        `my task:v2` logs as `my_task_v2`)."""
        self._pending.append(({metric_name(k): v for k, v in metrics.items()}, step))
        self._flush()

    @property
    def pending_steps(self) -> list[int]:
        """Steps whose metrics wait for MLflow to answer again."""
        return sorted({step for _, step in self._pending})

    def _flush(self) -> None:
        while self._pending and time.monotonic() >= self._quiet_until:
            metrics, step = self._pending[0]
            if not self.attempt(f"metrics of step {step}", self._log_now, metrics, step):
                return
            self._pending.pop(0)

    def _log_now(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and v == v and step > self._logged_through.get(k, step - 1)
        ]
        for i in range(0, len(items), 500):
            chunk = items[i : i + 500]
            self.client.log_batch(self.run_id, metrics=chunk)
            self._logged_through.update((m.key, step) for m in chunk)  # a retry skips them

    def attempt(self, what: str, call: Callable[..., Any], *args: Any) -> bool:
        """call(*args), True if it went through; False (with a warning) when MLflow is out."""
        if time.monotonic() < self._quiet_until:
            self.outages += 1
            log.warning("MLflow at %s is unreachable: %s skipped", self.tracking_uri, what)
            return False
        try:
            call(*args)
        except Exception as err:
            if not _is_outage(err):
                raise
            self._quiet_until = time.monotonic() + RETRY_AFTER_S
            self.outages += 1
            log.warning(
                "MLflow at %s is unreachable (%s): %s kept for later; training goes on",
                self.tracking_uri,
                str(err)[:200],
                what,
            )
            return False
        return True

    def attach(self, run_id: str) -> None:
        """Log into an existing run (a training run that an evaluation adds to) without
        changing its status."""
        self.run_id = run_id

    def log_text(self, text: str, artifact_file: str) -> None:
        self.attempt(artifact_file, self.client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        text = json.dumps(data, indent=2, default=str)
        self.attempt(artifact_file, self.client.log_text, self.run_id, text, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        self.attempt(
            artifact_file,
            lambda: self.client.log_table(
                self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file
            ),
        )

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / Path(artifact_file).name
            figure.savefig(out, dpi=110, bbox_inches="tight")
            folder = str(Path(artifact_file).parent) if "/" in artifact_file else None
            self.attempt(artifact_file, self.client.log_artifact, self.run_id, str(out), folder)

    def set_tag(self, key: str, value: str) -> None:
        self.attempt(f"tag {key}", self.client.set_tag, self.run_id, key, value)

    def register_checkpoint(
        self, hf_dir: str, step: int, run_id: str, accuracy: float | None, keep: int = 0
    ) -> str | None:
        """The HF export in `hf_dir` as a version of the run's registered model
        (metis_core/tracking/registry.py); its version, or None when MLflow is unreachable: then
        it waits, with any earlier ones, for the next call or `end`."""
        self._pending_versions.append(PendingVersion(hf_dir, step, run_id, accuracy, keep))
        return self._register_pending().get(step)

    @property
    def pending_versions(self) -> list[int]:
        """Steps whose checkpoint waits for MLflow to answer again to become a model version."""
        return [v.step for v in self._pending_versions]

    def _register_pending(self) -> dict[int, str]:
        """Register the waiting checkpoints, oldest first, until MLflow is out again; an export
        removed meanwhile (an older checkpoint pruned) is dropped with a warning."""
        from metis_core.tracking.registry import register_checkpoint

        registered: dict[int, str] = {}
        while self._pending_versions:
            waiting = self._pending_versions[0]
            if not (Path(waiting.hf_dir) / "config.json").is_file():
                log.warning(
                    "the checkpoint of step %d was removed before MLflow answered again: it has "
                    "no model version (later checkpoints do)",
                    waiting.step,
                )
                self._pending_versions.pop(0)
                continue
            outages = self.outages
            version = register_checkpoint(
                self, waiting.hf_dir, waiting.step, waiting.run_id, waiting.accuracy, waiting.keep
            )
            if self.outages > outages:
                break
            self._pending_versions.pop(0)
            if version is not None:
                registered[waiting.step] = version
        return registered

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        if self._monitor is not None:
            with contextlib.suppress(Exception):  # its last sample must not mask the run's end
                self._monitor.finish()
            self._monitor = None
        self._quiet_until = 0.0  # one last try
        self._flush()
        self._register_pending()
        if self._pending_versions:
            log.warning(
                "MLflow at %s never came back: the checkpoints of steps %s have no model version "
                "(their HF exports are on disk, in the run's checkpoints folder)",
                self.tracking_uri,
                self.pending_versions,
            )
        if self._pending:
            log.warning(
                "MLflow at %s never came back: steps %s are not in MLflow (they are in the run's "
                "history.duckdb, table steps)",
                self.tracking_uri,
                self.pending_steps,
            )
        self.attempt(f"status {status}", self.client.set_terminated, self.run_id, status)
