"""metis-compare: curricula side by side on one config, as a Prefect flow.

Every (sampler, seed) pair is a training run in `<comparison>/<sampler>-seed<seed>/` and a child
flow run of this one, with the same config, initial weights, pool and held-out split; in MLflow each
is a child run of the comparison's parent run. Run the same command again after a kill and the
comparison resumes: finished runs are not rerun, unfinished ones continue from their checkpoints;
with more samplers or seeds, it grows (the config and target must stay the same).
When all are done, the table (tokens, rollouts and seconds to reach the target accuracy; best and
final accuracy; zero-variance share; mean and bootstrap interval over seeds) and the plots go to
`comparison.md`, `comparison.json`, `comparison.png` and to the parent MLflow run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from metis_core.comparison import (
    ComparisonError,
    RunCurve,
    check_plan,
    compare_table,
    default_target,
    table_markdown,
)
from metis_core.config import RunConfig, saved_run_config
from metis_core.config_loading import describe_changes, load_config
from metis_core.launch import close_finished_run, is_finished, prepare_run_dir
from metis_core.run import read_json, write_json
from metis_core.store.outcomes import OutcomeStore
from metis_core.tracking.mlflow_tracker import Tracker, default_tracking_uri

PLAN_FILE = "compare.json"


def child_name(sampler: str, seed: int) -> str:
    return f"{sampler}-seed{seed}"


def _tracker(cfg: RunConfig, out: Path) -> Tracker:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri or default_tracking_uri(out)
    return Tracker(uri, cfg.experiment, out / "mlartifacts")


def _difference(saved: dict, cfg: RunConfig, target: float | None) -> str:
    """What differs between a comparison folder's plan and this one, for the refusal."""
    if saved["target"] != target:
        return f"target ({saved['target']}, not {target})"
    try:
        changed = describe_changes(RunConfig.model_validate(saved["config"]), cfg)
    except ValueError:  # a config this version of metis no longer reads
        return "config"
    # (trainer.precision and model.dtype: what `auto` became on the machine that started it)
    return f"config ({changed})" if changed else "config"


@task(name="plan-comparison", cache_policy=NO_CACHE)
def plan(
    config_file: str | None,
    overrides: list[str],
    samplers: list[str],
    seeds: list[int],
    target: float | None,
    output: str | None,
) -> dict:
    """The comparison folder, its parent MLflow run, and one prepared run folder per child. A
    folder that holds a comparison of another config or target is refused, never overwritten."""
    check_plan(samplers, seeds, target)
    cfg = load_config(config_file, overrides)
    out = Path(output) if output else Path(cfg.output_dir) / f"compare-{cfg.name}"
    wanted = {"config": cfg.model_dump(mode="json"), "target": target}
    plan_file = out / PLAN_FILE
    saved = read_json(plan_file) if plan_file.is_file() else None
    if saved is not None and {k: saved[k] for k in wanted} != wanted:
        raise ComparisonError(
            f"{out} holds a comparison with another {_difference(saved, cfg, target)}; give "
            "another --output, or the same config to resume it (samplers and seeds may be added)"
        )
    out.mkdir(parents=True, exist_ok=True)
    tracker = _tracker(cfg, out)
    parent = tracker.start(
        f"compare-{cfg.name}",
        saved.get("mlflow_run_id") if saved else None,
        tags={"metis.comparison": str(out.resolve())},
    )
    if saved is None:
        tracker.log_params({"steps": cfg.steps, "target": str(target)})
        write_json(plan_file, wanted | {"mlflow_run_id": parent})
    children = {}
    for seed in seeds:  # seeds outermost: a comparison cut short still covers every sampler
        for sampler in samplers:
            child = cfg.model_dump(mode="json")
            child |= {"seed": seed, "output_dir": str(out), "name": f"{cfg.name}-{sampler}"}
            child["curriculum"]["sampler"] = sampler
            run_dir = prepare_run_dir(RunConfig.model_validate(child), child_name(sampler, seed))
            info = run_dir / "run.json"
            if not info.is_file():  # the child's MLflow run is created under the parent
                write_json(info, {"parent_mlflow_run_id": parent})
            children[child_name(sampler, seed)] = str(run_dir)
    return {"dir": str(out), "mlflow_run_id": parent, "children": children}


@task(name="summarise-comparison", cache_policy=NO_CACHE)
def summarise(comparison: dict, target: float | None) -> dict:
    """Curves from each finished run's steps table (DuckDB), the table, the plots; into files
    and the parent MLflow run."""
    from metis_core.plots import comparison_curves

    out = Path(comparison["dir"])
    curves = []
    for folder in comparison["children"].values():
        run_dir = Path(folder)
        if not is_finished(run_dir):
            continue
        cfg = saved_run_config(run_dir)
        store = OutcomeStore(run_dir / "history.duckdb")
        metrics = store.step_metrics(run_dir.name)
        curves.append(
            RunCurve.from_steps(cfg.curriculum.sampler, cfg.seed, metrics, cfg.eval.samples)
        )
    goal = target if target is not None else default_target(curves)
    table = compare_table(curves, goal)
    markdown = table_markdown(table, goal)
    (out / "comparison.md").write_text(markdown)
    write_json(
        out / "comparison.json",
        {"target": goal, "table": table, "runs": [c.__dict__ for c in curves]},
    )
    figure = comparison_curves(curves, goal)
    figure.savefig(out / "comparison.png", dpi=110, bbox_inches="tight")
    cfg = RunConfig.model_validate(read_json(out / PLAN_FILE)["config"])
    tracker = _tracker(cfg, out)
    tracker.start("", comparison["mlflow_run_id"])
    tracker.log_metrics(
        {f"{s}/{k}": v for s, row in table.items() for k, v in row.items()} | {"target": goal}, 0
    )
    tracker.log_dict(json.loads((out / "comparison.json").read_text()), "comparison.json")
    tracker.log_text(markdown, "comparison.md")
    tracker.log_figure(figure, "comparison.png")
    return {"target": goal, "table": table}


def _end_parent(comparison: dict, status: str) -> None:
    out = Path(comparison["dir"])
    tracker = _tracker(RunConfig.model_validate(read_json(out / PLAN_FILE)["config"]), out)
    tracker.attach(comparison["mlflow_run_id"])
    tracker.end(status)


@flow(name="metis-compare", log_prints=True)
def compare(
    config_file: str | None = None,
    overrides: list[str] | None = None,
    samplers: list[str] | None = None,
    seeds: list[int] | None = None,
    target: float | None = None,
    output: str | None = None,
) -> str:
    """Train every sampler with every seed on one config and compare them. Returns the
    comparison folder.

    samplers: default uniform and metis; seeds: default 0, 1, 2; target: the held-out accuracy
    to reach (default: uniform's best, mean over its seeds); output: the comparison folder
    (default `<output_dir>/compare-<name>`; the same folder resumes).
    """
    from flows.train import train

    samplers = list(samplers or ["uniform", "metis"])
    seeds = list(seeds if seeds is not None else [0, 1, 2])
    comparison = plan(config_file, list(overrides or []), samplers, seeds, target, output)
    failed = []
    try:
        for name, run_dir in comparison["children"].items():
            if is_finished(Path(run_dir)):
                tqdm.write(f"metis-compare: {name} finished earlier; not rerun")
                close_finished_run(Path(run_dir))
                continue
            try:
                train.with_options(flow_run_name=name)(resume=run_dir)
            except Exception as err:  # the others still run; the comparison fails after them
                failed.append(f"{name}: {type(err).__name__}: {err}")
        summarise(comparison, target)
    except BaseException:  # the parent MLflow run must not stay RUNNING
        _end_parent(comparison, "FAILED")
        raise
    _end_parent(comparison, "FAILED" if failed else "FINISHED")
    # (to the terminal, as metis train's lines: Prefect's console log is WARNING and up)
    tqdm.write((Path(comparison["dir"]) / "comparison.md").read_text())
    if failed:
        raise RuntimeError("runs failed (the table leaves them out):\n" + "\n".join(failed))
    return comparison["dir"]
