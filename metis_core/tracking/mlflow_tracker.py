"""MLflow: one run per training run. Uses MlflowClient with an explicit run id, so it works from
any thread a Prefect task runs in, and a resumed run logs into the same MLflow run."""

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

    def start(
        self, run_name: str, run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Start a new run, or reopen `run_id` (resume)."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(
                self.experiment_id, run_name=run_name, tags=tags or {}
            ).info.run_id
        return self.run_id

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
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and v == v
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

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
