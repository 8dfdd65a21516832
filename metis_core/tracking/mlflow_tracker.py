"""MLflow: one run per training run. Uses MlflowClient with an explicit run id, so it works from
any thread a Prefect task runs in, and a resumed run logs into the same MLflow run.

Logging is idempotent per (metric, step): a resumed run replays the steps after its checkpoint,
some of which MLflow may already hold (killed after logging, before the checkpoint), so a metric
is logged at a step only if MLflow holds nothing for it at that step or later. The first value
logged for a step stands (a replay computes the same one: runs are reproducible).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_root.resolve().as_uri()
            )
        else:
            self.experiment_id = found.experiment_id
        self.run_id: str | None = None
        self._logged_through: dict[str, int] = {}
        """metric -> the last step MLflow holds a value at."""

    def start(
        self, run_name: str, run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Start a new run, or reopen `run_id` (resume)."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            latest = self.client.get_run(run_id).data.to_proto().metrics
            self._logged_through = {m.key: m.step for m in latest}
        else:
            self.run_id = self.client.create_run(
                self.experiment_id, run_name=run_name, tags=tags or {}
            ).info.run_id
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
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and v == v and step > self._logged_through.get(k, step - 1)
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])
        self._logged_through.update((m.key, step) for m in items)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=str), artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / Path(artifact_file).name
            figure.savefig(out, dpi=110, bbox_inches="tight")
            self.client.log_artifact(
                self.run_id,
                str(out),
                str(Path(artifact_file).parent) if "/" in artifact_file else None,
            )

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
