"""One Prefect task per stage. They pass run ids, step numbers and file paths, never live objects.

Stages that only read the state at the start of a step (judge, select, rollout, verify) are cached
under (run, run folder and config, step, stage) with persisted results: after a crash, a resumed
run restored to the same weights reuses their files instead of paying for the rollouts again.
Stages that change state (record, update, sync, checkpoint) always run; record replaces the
step's rows as a whole, so a replay leaves neither duplicates nor stale rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from metis_core.judgment import CalibrationExample
from metis_core.stages import audit as audit_stage
from metis_core.stages import curriculum, outcomes, policy, report
from tasks.runtime import live_run


def _step_cache_key(stage: str):
    def key(_context: Any, parameters: dict[str, Any]) -> str:
        # the folder and the config too: two comparisons may each hold a run named
        # uniform-seed0, and a config edited by hand must not reuse the old results
        run = live_run(parameters["run_id"])
        where = hashlib.sha1(f"{run.run_dir.resolve()}\n{run.cfg.to_json()}".encode())
        return f"{run.run_id}-{where.hexdigest()[:12]}-step{parameters['step']:06d}-{stage}"

    return key


def _still_there(path: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is gone; delete the Prefect cache or start a fresh run")
    return path


def _cached(stage: str):
    return task(name=stage, cache_key_fn=_step_cache_key(stage), persist_result=True, retries=0)


def _always(stage: str):
    return task(name=stage, cache_policy=NO_CACHE, persist_result=False)


@_always("history")
def history(run_id: str, step: int) -> dict[str, list[CalibrationExample]]:
    run = live_run(run_id)
    with run.timed("history"):
        return curriculum.history(run, step, curriculum.draw_candidates(run, step))


@_cached("judge")
def judge(run_id: str, step: int, memory: dict[str, list[CalibrationExample]]) -> str:
    run = live_run(run_id)
    with run.timed("judge"):
        return str(curriculum.judge(run, step, memory))


@_cached("select")
def select(run_id: str, step: int, judgments: str) -> str:
    run = live_run(run_id)
    with run.timed("select"):
        return str(curriculum.select(run, step, Path(_still_there(judgments))))


@_cached("rollout")
def rollout(run_id: str, step: int, selection: str) -> str:
    run = live_run(run_id)
    with run.timed("rollout"):
        return str(outcomes.rollout(run, step, Path(_still_there(selection))))


@_cached("verify")
def verify(run_id: str, step: int, rollouts: str, judgments: str) -> str:
    run = live_run(run_id)
    with run.timed("verify"):
        return str(outcomes.verify(run, step, Path(_still_there(rollouts)), Path(judgments)))


@_always("record")
def record(
    run_id: str, step: int, rollouts: str, verified: str, judgments: str
) -> dict[str, float]:
    run = live_run(run_id)
    with run.timed("record"):
        return outcomes.record(run, step, Path(rollouts), Path(verified), Path(judgments))


@_always("update")
def update(
    run_id: str, step: int, rollouts: str, verified: str, judgments: str
) -> dict[str, float]:
    run = live_run(run_id)
    with run.timed("update"):
        return policy.update(run, step, Path(rollouts), Path(verified), Path(judgments))


@_always("sync")
def sync(run_id: str, step: int) -> dict[str, float]:
    run = live_run(run_id)
    with run.timed("sync"):
        return policy.sync(run, step)


@_always("evaluate")
def evaluate(run_id: str, step: int) -> dict[str, float]:
    run = live_run(run_id)
    with run.timed("evaluate"):
        return policy.evaluate(run, step)


@_always("audit")
def audit(run_id: str, step: int) -> dict[str, float]:
    run = live_run(run_id)
    with run.timed("audit"):
        return audit_stage.audit(run, step)


@_always("checkpoint")
def checkpoint(run_id: str, step: int) -> str:
    """Runs after the step's metrics are logged, so it logs its own time."""
    run = live_run(run_id)
    with run.timed("checkpoint"):
        path = str(policy.checkpoint(run, step))
    run.tracker.log_metrics({"time/checkpoint_s": run.stage_seconds["checkpoint"]}, step)
    return path


@_always("log")
def log_iteration(
    run_id: str, step: int, rollouts: str, verified: str, judgments: str, extra: dict[str, float]
) -> dict[str, float]:
    """Assemble the iteration's metrics, write them to DuckDB's steps table and MLflow."""
    run = live_run(run_id)
    with run.timed("log"):
        training = sum(s for k, s in run.stage_seconds.items() if k not in ("evaluate", "audit"))
        run.charge("train_seconds", training)
        metrics = report.iteration_metrics(run, Path(verified), Path(judgments))
        metrics.update(extra)
        metrics.update({f"time/{k}_s": v for k, v in run.stage_seconds.items()})
        run.store.record_step(run_id, step, metrics)
        run.tracker.log_metrics(metrics, step)
        run.tracker.log_table(
            report.sample_table(run, Path(rollouts), Path(verified)),
            f"samples/step_{step:06d}.json",
        )
    return metrics


@_always("plots")
def plots(run_id: str) -> list[str]:
    """Judge calibration and training curves as PNG artifacts in the MLflow run."""
    run = live_run(run_id)
    figures = report.final_figures(run)
    for path, figure in figures.items():
        run.tracker.log_figure(figure, path)
    return list(figures)
