"""MLflow as the place to browse a run's data and models, beyond metrics.

- `register_checkpoint`: a checkpoint's HF export becomes an MLflow logged model (the weights as
  its artifacts, so pruning the run folder does not lose them) and a version of the registered
  model named after the run, with the alias `best` (by held-out accuracy), so `metis eval
  --checkpoint models:/<run id>@best` works; MLflow reserves the alias `latest`, and resolves
  `models:/<run id>/latest` itself. Idempotent per step: a replayed step after a kill finds its
  version instead of adding another. Retention: with `keep` > 0 only the newest `keep` versions
  and the best stay; older ones are deleted with their logged model and its weights (each is a
  full copy of the model), as `mlflow gc` would, so the artifact store does not grow with the run.
- `log_datasets`: the training pool and the held-out split as dataset inputs of the run.
All calls go through the tracker's outage handling: MLflow being down never stops training.
"""

from __future__ import annotations

import logging
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

from metis_core.tracking.mlflow_tracker import Tracker

STEP_TAG, ACCURACY_TAG = "metis.step", "metis.heldout_accuracy"
log = logging.getLogger(__name__)


def model_name(run_id: str) -> str:
    """The registered model's name: the run id (MLflow allows letters, digits, `-`, `_`, `.`)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run_id)


def register_checkpoint(
    tracker: Tracker,
    hf_dir: str,
    step: int,
    run_id: str,
    accuracy: float | None,
    keep: int = 0,
) -> str | None:
    """Register the export in `hf_dir` as a version of `model_name(run_id)`, then keep only the
    newest `keep` versions and the best (0: all); its version number, or None when MLflow is
    unreachable (the checkpoint on disk is unaffected)."""
    from mlflow.exceptions import MlflowException

    out: list[str] = []
    try:
        tracker.attempt(
            f"model version of step {step}",
            lambda: out.append(_register(tracker, hf_dir, step, model_name(run_id), accuracy)),
        )
    except MlflowException as err:  # the checkpoint on disk is what resuming needs
        log.warning("MLflow refused the model version of step %d: %s", step, err.message)
    if out and keep > 0:
        try:  # housekeeping: never worth failing a checkpoint for
            tracker.attempt("pruning model versions", _prune, tracker, model_name(run_id), keep)
        except Exception as err:
            log.warning("old model versions not pruned (%s: %s)", type(err).__name__, err)
    return out[0] if out else None


def _register(tracker: Tracker, hf_dir: str, step: int, name: str, accuracy: float | None) -> str:
    from mlflow.exceptions import MlflowException

    client = tracker.client
    try:
        client.create_registered_model(name, tags={"metis.run": tracker.run_id or ""})
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    versions = client.search_model_versions(f"name = '{name}'")
    done = [v for v in versions if v.tags.get(STEP_TAG) == str(step)]
    if done:
        version = done[0].version
    else:
        tags = {STEP_TAG: str(step)}
        if accuracy is not None and not math.isnan(accuracy):
            tags[ACCURACY_TAG] = f"{accuracy:.6f}"
        model = client.create_logged_model(
            tracker.experiment_id, name=f"{name}-step-{step:06d}", source_run_id=tracker.run_id,
            tags=tags, model_type="transformers",
        )  # fmt: skip
        client.log_model_artifacts(model.model_id, hf_dir)
        client.finalize_logged_model(model.model_id, "READY")
        version = client.create_model_version(  # (a models:/ source resolves against the
            # global tracking URI in a client-side store, so give where the weights are)
            name, model.artifact_location, run_id=tracker.run_id, tags=tags,
            model_id=model.model_id,
        ).version  # fmt: skip
        versions = [*versions, client.get_model_version(name, version)]
    scored = [v for v in versions if ACCURACY_TAG in v.tags]
    if scored:
        best = max(scored, key=lambda v: (float(v.tags[ACCURACY_TAG]), int(v.version)))
        client.set_registered_model_alias(name, "best", str(best.version))
    return str(version)


def versions_to_prune(versions: list[int], best: int | None, keep: int) -> list[int]:
    """Which versions go: all but the newest `keep` and `best`."""
    newest = sorted(versions, reverse=True)[:keep]
    return sorted(v for v in versions if v not in newest and v != best)


def _prune(tracker: Tracker, name: str, keep: int) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = tracker.client
    versions = {int(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    try:
        best: int | None = int(client.get_model_version_by_alias(name, "best").version)
    except MlflowException:  # no version has a held-out accuracy yet
        best = None
    for number in versions_to_prune(list(versions), best, keep):
        version = versions[number]
        client.delete_model_version(name, str(number))
        # its logged model (the version's source is where that model's weights are; the
        # registry does not hand back the model id on every store)
        for model in client.search_logged_models(
            experiment_ids=[tracker.experiment_id],
            filter_string=f"name = '{name}-step-{int(version.tags.get(STEP_TAG, -1)):06d}'",
        ):
            if model.artifact_location == version.source:
                client.delete_logged_model(model.model_id)
        try:  # the weights: what `mlflow gc` would remove later
            get_artifact_repository(version.source, tracker.tracking_uri).delete_artifacts()
        except NotImplementedError:
            log.warning("this artifact store cannot delete %s; `mlflow gc` can", version.source)
        log.info(
            "model version %s of %s (step %s) pruned", number, name, version.tags.get(STEP_TAG)
        )


def log_datasets(tracker: Tracker, pool: Any, pool_path: str) -> None:
    """The pool's training and held-out splits as the run's dataset inputs (prompt, task,
    domain, difficulty; the answers stay out)."""
    tracker.attempt("dataset inputs", lambda: _log_datasets(tracker, pool, pool_path))


def _log_datasets(tracker: Tracker, pool: Any, pool_path: str) -> None:
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    frame = pool.to_pandas()
    keep = [c for c in ("prompt_id", "prompt", "task", "domain", "difficulty") if c in frame]
    inputs = []
    for split, context in (("train", "training"), ("heldout", "evaluation")):
        part = frame[frame["split"] == split][keep] if "split" in frame else frame[keep]
        with warnings.catch_warnings():  # MLflow registers its local source class twice
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(part, source=pool_path, name=f"pool-{split}")
        tag = InputTag("mlflow.data.context", context)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[tag]))
    tracker.client.log_inputs(tracker.run_id or "", datasets=inputs)


def download_version(spec: str, tracking_uri: str, root: str) -> tuple[str, int, str | None]:
    """`models:/NAME@ALIAS`, `models:/NAME/VERSION` or `models:/NAME/latest`: its weights, in
    `root/NAME-vVERSION` (downloaded once), the step it was saved at, and the training run's
    folder (from the MLflow run's tags) if known."""
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    name, _, which = spec.removeprefix("models:/").partition("@")
    if which:
        version = client.get_model_version_by_alias(name, which)
    else:
        name, _, number = name.rpartition("/")
        if number == "latest":
            found = client.search_model_versions(f"name = '{name}'")
            number = str(max(int(v.version) for v in found)) if found else "0"
        version = client.get_model_version(name, number)
    folder = Path(root) / f"{name}-v{version.version}"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        download_artifacts(
            artifact_uri=version.source, dst_path=str(folder), tracking_uri=tracking_uri
        )
        (folder / ".complete").touch()
    path = next(p.parent for p in sorted(folder.rglob("config.json")))  # under artifacts/, maybe
    run_dir = (
        client.get_run(version.run_id).data.tags.get("metis.run_dir") if version.run_id else None
    )
    return str(path), int(version.tags.get(STEP_TAG, -1)), run_dir
