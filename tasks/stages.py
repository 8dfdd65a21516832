"""One Prefect task per stage. They pass run ids, step numbers and file paths, never live objects.

Stages that only read the state at the start of a step (judge, select, rollout, verify) are cached
under (run, run folder and config, step, stage) with persisted results, kept beside the run
(`<run_dir>/.prefect-results/`) however it was launched (CLI, deployment, `--resume`): after a
crash, a resumed run restored to the same weights reuses their files instead of paying for the
rollouts again.
Stages that change state (record, update, sync, checkpoint) always run; record replaces the
step's rows as a whole, so a replay leaves neither duplicates nor stale rows. A cached stage's
seconds are kept beside its result, so a replayed step still reports what the stage cost.
Every stage starts with a failpoint (metis_core/failpoints.py) for the kill tests.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.filesystems import LocalFileSystem

from metis_core.failpoints import failpoint
from metis_core.judgment import CalibrationExample
from metis_core.run import Run, read_json, write_json
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


CACHED = ("judge", "select", "rollout", "verify")


def _cached(stage: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def decorate(fn: Callable[..., str]) -> Callable[..., str]:
        cached = task(
            name=stage, cache_key_fn=_step_cache_key(stage), persist_result=True, retries=0,
            task_run_name=_run_name(stage),
        )(fn)  # fmt: skip

        @functools.wraps(fn)
        def call(run_id: str, step: int, *args: Any) -> str:
            storage = _result_storage(str(live_run(run_id).run_dir.resolve()))
            return cached.with_options(result_storage=storage)(run_id, step, *args)

        return call

    return decorate


@functools.cache
def _result_storage(run_dir: str) -> LocalFileSystem:
    """The run's own result store, saved as a block (Prefect stores only saved blocks' results)."""
    storage = LocalFileSystem(basepath=str(Path(run_dir) / ".prefect-results"))
    storage.save(f"metis-results-{hashlib.sha1(run_dir.encode()).hexdigest()[:16]}", overwrite=True)
    return storage


def _always(stage: str):
    run_name = _run_name(stage) if stage != "plots" else stage
    return task(name=stage, cache_policy=NO_CACHE, persist_result=False, task_run_name=run_name)


def _run_name(stage: str) -> str:
    """Task runs named after their iteration ("step-0003-judge"), so Prefect's UI lists and
    groups them by step, also where they run outside an iteration's flow run (the initial
    evaluation, a checkpoint before a preempted run stops)."""
    return "step-{step:04d}-" + stage


@contextmanager
def _stage(run: Run, step: int, stage: str) -> Iterator[None]:
    """Time a stage (a cached one also into steps/<step>/seconds-<stage>.json), after its
    failpoint."""
    failpoint(stage, step)
    with run.timed(stage):
        yield
    if stage in CACHED:
        write_json(run.step_file(step, f"seconds-{stage}"), run.stage_seconds[stage])


def _replayed_seconds(run: Run, step: int) -> None:
    """The seconds of cached stages this process did not run (served from Prefect's cache)."""
    for stage in CACHED:
        path = run.step_file(step, f"seconds-{stage}")
        if stage not in run.stage_seconds and path.is_file():
            run.stage_seconds[stage] = float(read_json(path))


@_always("history")
def history(run_id: str, step: int) -> dict[str, list[CalibrationExample]]:
    run = live_run(run_id)
    with _stage(run, step, "history"):
        return curriculum.history(run, step, curriculum.draw_candidates(run, step))


@_cached("judge")
def judge(run_id: str, step: int, memory: dict[str, list[CalibrationExample]]) -> str:
    run = live_run(run_id)
    with _stage(run, step, "judge"):
        return str(curriculum.judge(run, step, memory))


@_cached("select")
def select(run_id: str, step: int, judgments: str) -> str:
    run = live_run(run_id)
    with _stage(run, step, "select"):
        return str(curriculum.select(run, step, Path(_still_there(judgments))))


@_cached("rollout")
def rollout(run_id: str, step: int, selection: str) -> str:
    run = live_run(run_id)
    with _stage(run, step, "rollout"):
        return str(outcomes.rollout(run, step, Path(_still_there(selection))))


@_cached("verify")
def verify(run_id: str, step: int, rollouts: str, judgments: str) -> str:
    run = live_run(run_id)
    with _stage(run, step, "verify"):
        return str(outcomes.verify(run, step, Path(_still_there(rollouts)), Path(judgments)))


@_always("record")
def record(
    run_id: str, step: int, rollouts: str, verified: str, judgments: str
) -> dict[str, float]:
    run = live_run(run_id)
    with _stage(run, step, "record"):
        return outcomes.record(run, step, Path(rollouts), Path(verified), Path(judgments))


@_always("update")
def update(
    run_id: str, step: int, rollouts: str, verified: str, judgments: str
) -> dict[str, float]:
    run = live_run(run_id)
    with _stage(run, step, "update"):
        return policy.update(run, step, Path(rollouts), Path(verified), Path(judgments))


@_always("sync")
def sync(run_id: str, step: int) -> dict[str, float]:
    run = live_run(run_id)
    with _stage(run, step, "sync"):
        return policy.sync(run, step)


@_always("evaluate")
def evaluate(run_id: str, step: int) -> dict[str, float]:
    run = live_run(run_id)
    with _stage(run, step, "evaluate"):
        return policy.evaluate(run, step)


@_always("audit")
def audit(run_id: str, step: int) -> dict[str, float]:
    run = live_run(run_id)
    with _stage(run, step, "audit"):
        return audit_stage.audit(run, step)


@_always("checkpoint")
def checkpoint(run_id: str, step: int) -> str:
    """Runs after the step's metrics are logged, so it logs its own time and the iteration's, just
    before the checkpoint counts as complete (a kill before that replays the step)."""
    run = live_run(run_id)
    failpoint("checkpoint", step)
    started = time.perf_counter()

    def log_times() -> None:
        seconds = {"time/checkpoint_s": time.perf_counter() - started}
        run.tracker.log_metrics(seconds | {"time/iteration_s": run.iteration_seconds()}, step)

    path = str(policy.checkpoint(run, step, before_commit=log_times))
    # a deployment trigger can act on it (prefect.yaml: metis-eval/on-checkpoint)
    emit_event(
        event="metis.checkpoint.saved",
        resource={
            "prefect.resource.id": f"metis.run.{run_id}",
            "prefect.resource.name": run_id,
            "metis.step": str(step),
            "metis.path": path,
        },  # fmt: skip
    )
    return path


@_always("log")
def log_iteration(
    run_id: str, step: int, rollouts: str, verified: str, judgments: str, extra: dict[str, float]
) -> dict[str, float]:
    """Assemble the iteration's metrics, write them to DuckDB's steps table and MLflow."""
    run = live_run(run_id)
    with _stage(run, step, "log"):
        _replayed_seconds(run, step)
        training = sum(s for k, s in run.stage_seconds.items() if k not in ("evaluate", "audit"))
        run.charge("train_seconds", training)
        metrics = report.iteration_metrics(run, Path(verified), Path(judgments))
        metrics.update(extra)
        metrics.update({f"time/{k}_s": v for k, v in run.stage_seconds.items()})
        metrics.update(_process_memory())
        run.store.record_step(run_id, step, metrics)
        run.tracker.log_metrics(metrics, step)
        run.tracker.log_table(
            report.sample_table(run, Path(rollouts), Path(verified)),
            f"samples/step_{step:06d}.json",
        )
    failpoint("mlflow-logged", step)
    return metrics


def _process_memory() -> dict[str, float]:
    """The flow's process's resident memory now and at its peak, GiB (the in-process engine and
    trainer included; a separate engine or a trainer group's ranks are processes of their own)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        now = pages * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError):  # no /proc (macOS): the peak alone
        return {"memory/peak_rss_gib": peak}
    return {"memory/rss_gib": now, "memory/peak_rss_gib": peak}


@_always("plots")
def plots(run_id: str) -> list[str]:
    """Judge calibration and training curves as PNG artifacts in the MLflow run."""
    run = live_run(run_id)
    figures = report.final_figures(run)
    for path, figure in figures.items():
        run.tracker.log_figure(figure, path)
    return list(figures)
