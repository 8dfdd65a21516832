"""metis-eval: evaluate a checkpoint on a list of benchmarks, as a Prefect flow.

Results go to `<output_dir>/eval-<time>/` (results.md, results.csv, samples/) and to MLflow: into
the training run the checkpoint came from (metrics `bench/<benchmark>/...` at the checkpoint's
step), or into a run of its own in the `metis-eval` experiment.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from metis_core.config import RunConfig, saved_run_config
from metis_core.config_loading import load_config
from metis_core.evaluation import (
    Checkpoint,
    EvalError,
    benchmark_rows,
    default_benchmarks,
    resolve_checkpoint,
    results_table,
)
from metis_core.launch import build_run_pool, configure_runtime_environment
from metis_core.tracking.mlflow_tracker import Tracker, tracking_uri_for
from tasks.evaluation import Evaluation, log_results, run_benchmark
from tasks.runtime import register, release


def _tracking_uri(cfg: RunConfig, run_dir: Path | None) -> str:
    found = run_dir is not None and (run_dir / "run.json").is_file()
    info = json.loads((run_dir / "run.json").read_text()) if found else {}
    return tracking_uri_for(cfg, info.get("tracking_uri"))


@task(name="resolve-checkpoint", cache_policy=NO_CACHE)
def _resolve(
    checkpoint: str | None, mlflow_run: str | None, tracking_uri: str, registry_root: str
) -> Checkpoint:
    if mlflow_run:
        from mlflow.tracking import MlflowClient

        tags = MlflowClient(tracking_uri=tracking_uri).get_run(mlflow_run).data.tags
        if "metis.latest_checkpoint" not in tags:
            raise EvalError(f"MLflow run {mlflow_run} has no metis.latest_checkpoint tag")
        return resolve_checkpoint(tags["metis.latest_checkpoint"])
    if not checkpoint:
        raise EvalError("give a checkpoint (path or embedded:...) or an MLflow run id")
    if checkpoint.startswith("models:/"):  # a registered model version (register_checkpoints)
        from mlflow.exceptions import MlflowException

        from metis_core.tracking.registry import download_version

        try:  # downloaded once into <output_dir>/registry/<name>-v<version>
            path, step, run_dir = download_version(checkpoint, tracking_uri, registry_root)
        except MlflowException as err:
            raise EvalError(f"{checkpoint}: {err.message} (MLflow at {tracking_uri})") from err
        found = resolve_checkpoint(path)
        return Checkpoint(found.model_path, step, Path(run_dir) if run_dir else None)
    return resolve_checkpoint(checkpoint)


@flow(name="metis-eval", log_prints=True)
def evaluate(
    checkpoint: str | None = None,
    mlflow_run: str | None = None,
    benchmarks: list[str] | None = None,
    samples: int = 4,
    max_prompts: int | None = 40,
    temperature: float = 0.7,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    output_dir: str | None = None,
    seed: int = 0,
) -> str:
    """Evaluate a checkpoint; returns the results folder.

    checkpoint: HF folder, run folder or `embedded:smollm2-135m-instruct`; mlflow_run: a training
    run's MLflow id instead. benchmarks: humaneval, bfcl:<category>, heldout. samples: k per
    prompt. max_prompts: a seeded subset per benchmark (None: all). config_file/overrides: domain
    prompt formats and decoding limits (default: the training run's own config, if any).
    """
    from metis_core.engine import open_engine
    from metis_core.model.weights import resolve_model

    configure_runtime_environment()
    base = load_config(config_file, overrides or [])
    registry_root = str(Path(base.output_dir) / "registry")
    ckpt = _resolve(checkpoint, mlflow_run, _tracking_uri(base, None), registry_root)
    run_dir = ckpt.run_dir
    cfg = base
    if run_dir is not None and not (config_file or overrides):
        cfg = saved_run_config(run_dir)
    pool = None
    if run_dir is not None and (run_dir / "pool.parquet").is_file():
        from datasets import Dataset

        pool = Dataset.from_parquet(str(run_dir / "pool.parquet"))
    elif "heldout" in (benchmarks or ()):
        # the held-out split of --config's (or the default) pool, built as a training run builds
        # it (same seed, same length filter), so it holds the same prompts as that run's
        pool = build_run_pool(cfg)
    names = list(benchmarks or default_benchmarks())
    for name in names:  # a wrong name fails here, before anything is created or loaded
        benchmark_rows(name, limit=1, seed=seed, pool=pool)

    # the engine loads before an MLflow run opens, so a failed load leaves no run marked RUNNING
    engine = open_engine(
        cfg.model.engine,
        resolve_model(ckpt.model_path),
        cfg.model.dtype,
        cfg.model.max_model_len,
        seed,
    )
    stamp = time.strftime("eval-%Y%m%d-%H%M%S")
    out_dir = Path(output_dir or (run_dir or Path(cfg.output_dir)) / "evals") / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = _tracking_uri(cfg, run_dir)
    info = json.loads((run_dir / "run.json").read_text()) if run_dir else {}
    if info.get("mlflow_run_id"):
        tracker = Tracker(tracking_uri, cfg.experiment, Path(cfg.output_dir) / "mlartifacts")
        tracker.attach(info["mlflow_run_id"])  # log into the training run, leave its status
    else:
        tracker = Tracker(tracking_uri, "metis-eval", Path(cfg.output_dir) / "mlartifacts")
        tracker.start(stamp, tags={"metis.checkpoint": ckpt.model_path})
        tracker.log_params(
            {"checkpoint": ckpt.model_path, "samples": samples, "max_prompts": max_prompts}
        )
    eval_id = stamp
    register(eval_id, Evaluation(cfg, engine, out_dir, tracker, pool))
    table: list[dict] = []
    try:
        for name in names:
            row = run_benchmark(eval_id, name, samples, max_prompts, temperature, seed)
            tqdm.write(
                f"{name}: {row['prompts']} prompts, avg@{samples} {row[f'avg@{samples}']:.3f}, "
                f"pass@1 {row['pass@1']:.3f}, pass@{samples} {row[f'pass@{samples}']:.3f}"
            )
            table.append(row)
        shown = [{k: v for k, v in r.items() if k != "metrics"} for r in table]
        markdown = (
            f"checkpoint `{ckpt.model_path}` (step {ckpt.step}), k={samples}, "
            f"temperature {temperature}\n\n" + results_table(shown)
        )
        (out_dir / "results.md").write_text(markdown)
        with (out_dir / "results.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(shown[0]))
            writer.writeheader()
            writer.writerows(shown)
        log_results(eval_id, ckpt.step, table, markdown)
        run_name = run_dir.name if run_dir else "no-run"
        create_table_artifact(
            shown, key=re.sub(r"[^a-z0-9-]+", "-", f"metis-{stamp}-{run_name}".lower())[:100],
            description=f"checkpoint `{ckpt.model_path}` (step {ckpt.step}), k={samples}",
        )  # fmt: skip
    finally:
        release(eval_id)
        if not info.get("mlflow_run_id"):
            tracker.end("FINISHED" if len(table) == len(names) else "FAILED")
    tqdm.write(markdown)
    return str(out_dir)
