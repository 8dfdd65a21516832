"""metis-train: the training loop as a Prefect flow. One iteration is the list of its stages."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import Crashed, State
from tqdm.auto import tqdm

from flows.iterations import as_iteration, close_orphaned_iterations
from flows.process import on_prefect_server
from metis_core.checkpoints import tag_of
from metis_core.config_loading import load_config
from metis_core.failpoints import failpoint
from metis_core.launch import (
    close_finished_run,
    is_finished,
    mark_finished,
    named_run_dir,
    open_run,
)
from metis_core.run import Run
from metis_core.stages import policy, report
from tasks import stages
from tasks.runtime import register, release


def metis_iteration(
    run_id: str, step: int, evaluate_now: bool, checkpoint_now: bool
) -> dict[str, float]:
    """One METIS iteration, top to bottom (docs/metis.md walks through each stage)."""
    memory = stages.history(run_id, step)  # calibration memory: K past (prompt, realised v) each
    judgments = stages.judge(run_id, step, memory)  # the policy predicts v_hat for m*B candidates
    selection = stages.select(run_id, step, judgments)  # Top-B of v_hat (+ a uniform floor)
    rollouts = stages.rollout(run_id, step, selection)  # n completions per selected prompt
    verified = stages.verify(run_id, step, rollouts, judgments)  # rewards, realised v, R_judge
    extra = stages.record(run_id, step, rollouts, verified, judgments)  # history (DuckDB), spend
    extra |= stages.update(run_id, step, rollouts, verified, judgments)  # L_task + lambda * L_judge
    extra |= stages.sync(run_id, step)  # new weights into vLLM, checked
    if evaluate_now:
        extra |= stages.evaluate(run_id, step)  # held-out avg@k, pass@k
        extra |= stages.audit(run_id, step)  # judge quality on a random sample, charged to eval
    metrics = stages.log_iteration(run_id, step, rollouts, verified, judgments, extra)
    if checkpoint_now:  # last: a checkpoint at step s means step s is fully recorded
        stages.checkpoint(run_id, step)
    return metrics


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and (step + 1) % every == 0)


class Preempted(RuntimeError):
    """The run was asked to stop (SIGTERM) and stopped after an iteration, with a checkpoint."""


class _StopRequest:
    """SIGTERM (a preemption notice, `kill`, Prefect cancelling) asks the run to stop after the
    current iteration and its checkpoint, instead of dying mid-step."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def listening(self) -> Iterator[_StopRequest]:
        """SIGTERM is this object's while inside. Entered again in each iteration's nested flow
        run, whose Prefect engine installs its own handler (one that aborts the step)."""
        if threading.current_thread() is not threading.main_thread():  # signals reach only that
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._request)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        tqdm.write("metis: SIGTERM: stopping after this iteration and its checkpoint")


R = TypeVar("R")


def _listening(iteration: Callable[..., R], stop: _StopRequest) -> Callable[..., R]:
    @functools.wraps(iteration)
    def listening(*args: Any, **kwargs: Any) -> R:
        with stop.listening():
            return iteration(*args, **kwargs)

    return listening


PREEMPTED = "Preempted"  # the state a flow run stopped by SIGTERM ends in (automations.yaml)


def _preempted(err: Preempted) -> State:
    """How a flow run stopped by SIGTERM ends in Prefect: Crashed, named Preempted (the event
    `prefect.flow-run.Preempted`: the resume automation puts it back on the queue, as it does a
    crash), not Failed, which stays for real errors and is never resumed by itself. Proposed,
    not forced: a run a person cancelled (the worker sends the same SIGTERM to a Cancelling run)
    refuses it and ends Cancelled. Calling the flow raises `err` all the same."""
    state = Crashed(name=PREEMPTED, message=str(err), data=err)
    if _own_process():
        _report_and_exit(state)
    return state


def _own_process() -> bool:
    """Whether this process exists only to run this flow run: the one a worker started for it
    (`python -m prefect.engine`, with the flow run's id in PREFECT__FLOW_RUN_ID), not a subflow
    and not an in-process `metis train`."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    return run is not None and os.environ.get("PREFECT__FLOW_RUN_ID") == str(run.id)


def _report_and_exit(state: State) -> NoReturn:
    """Report `state` for this flow run and end the process at once, with 0 (the state is
    reported). Not through Prefect's engine: its teardown takes seconds (vLLM, torch), during
    which the automation has already put the run back on the queue and a worker starts it again
    beside this process; the worker would then report this process's non-zero exit as a crash
    of the new attempt (the walkthrough test saw two processes of one flow run that way). Events
    (the checkpoint's), logs and output are sent first."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    run = FlowRunContext.get().flow_run  # type: ignore[union-attr]
    tqdm.write(f"metis: flow run {run.name}: {state.name}: {state.message}")
    for send in (lambda: EventsWorker.drain_all(timeout=30), APILogHandler.flush):
        with contextlib.suppress(Exception):  # (what could not be sent is lost, not fatal)
            send()
    try:
        with get_client(sync_client=True) as client:
            reply = client.set_flow_run_state(
                run.id, Crashed(name=state.name, message=state.message)
            )
    except Exception as err:  # then the worker reports the exit as a crash, resumed all the same
        tqdm.write(f"metis: could not report {state.name} ({type(err).__name__}: {err})")
        _flush_and_exit(143)
    tqdm.write(f"metis: Prefect answered {reply.status.value} ({reply.state and reply.state.name})")
    _flush_and_exit(0)


def _flush_and_exit(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _flow_run_suffix() -> str:
    """`<created>-<id>` of this Prefect flow run: the same for every retry of it (a retry keeps
    the flow run), so a Retry from the Prefect UI or a crash automation continues the run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx is not None else None
    if flow_run is None or flow_run.created is None:
        return time.strftime("%Y%m%d-%H%M%S")
    return f"{flow_run.created:%Y%m%d-%H%M%S}-{str(flow_run.id)[:4]}"


@task(name="open-run", cache_policy=NO_CACHE, log_prints=False)  # (datasets' dill prints bytecode)
def _prepare(
    config_file: str | None,
    overrides: list[str],
    resume: str | None,
    run_id: str | None,
    suffix: str,
) -> str:
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"--resume {resume}: no config.json there; give a run folder under the output dir"
            )
        return str(run_dir)
    cfg = load_config(config_file, overrides)
    return str(named_run_dir(cfg, run_id or f"{cfg.name}-{suffix}"))


@flow(name="metis-train", log_prints=True)
def train(
    config_file: str | None = None,
    overrides: list[str] | None = None,
    resume: str | None = None,
    run_id: str | None = None,
    max_attempts: int = 5,
) -> str | State:
    """Train a policy with a self-judged curriculum. Returns the run folder; stopped by SIGTERM,
    the flow run ends Preempted (a Crashed state) and calling the flow raises `Preempted`.

    config_file: YAML config (sparse); overrides: `key=value` strings; resume: a run folder to
    continue from its latest checkpoint; run_id: the run's name under output_dir (an unfinished
    run of that name continues, a finished one is left as it is); max_attempts: how many times
    one Prefect flow run may be run (retries, crash automations) before it refuses to start.
    """
    from prefect.runtime import flow_run

    if flow_run.run_count > max_attempts:
        raise RuntimeError(
            f"this flow run was started {flow_run.run_count} times (max_attempts={max_attempts}): "
            "it keeps failing or crashing; read its logs, then resume with `metis train --resume`"
        )
    run_dir = Path(_prepare(config_file, list(overrides or []), resume, run_id, _flow_run_suffix()))
    if is_finished(run_dir):
        tqdm.write(f"metis: {run_dir.name} already finished all its steps; nothing to do")
        close_finished_run(run_dir)
        return str(run_dir)
    close_orphaned_iterations()  # an earlier attempt's, killed with its process
    with _StopRequest().listening() as stop, _machine_slot():
        try:
            return _train(run_dir, stop)
        except Preempted as err:
            preempted = err
    return _preempted(preempted)  # (after the machine slot is given back)


MACHINE_LIMIT = "metis-machine"


def _machine_slot() -> contextlib.AbstractContextManager[object]:
    """On a Prefect server with the global concurrency limit `metis-machine` (`metis services
    up` makes it, limit 1), a training run waits for its slot, so two runs never share one
    machine's cores or accelerator by accident; the lease lapses 60 s after a crashed run. No
    limit on the server, or a temporary server: no waiting."""
    if not on_prefect_server():  # the URL in the environment or in the active Prefect profile
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(MACHINE_LIMIT, occupy=1, strict=False, lease_duration=60,
                       raise_on_lease_renewal_failure=False)  # fmt: skip


def _train(run_dir: Path, stop: _StopRequest) -> str:
    run = open_run(run_dir)
    register(run.run_id, run)
    cfg = run.cfg
    last = cfg.steps - 1
    status = "FAILED"
    try:
        if run.start_step > 0:
            tqdm.write(
                f"metis: resumed {run.run_id} from its latest checkpoint: continuing at step {run.start_step}"
            )
            restored = run.start_step - 1
            policy.register_restored(run, restored, run.checkpoint_dir / tag_of(restored))
        elif cfg.eval.at_start:
            _initial_evaluation(run)
        bar = tqdm(range(run.start_step, cfg.steps), desc=run.run_id, unit="it", dynamic_ncols=True)
        progress = _artifact(
            create_progress_artifact, 100 * run.start_step / cfg.steps,
            key=_key(run.run_id, "progress"),
            description=f"iterations of {run.run_id} done, of {cfg.steps}",
        )  # fmt: skip
        metrics: dict[str, float] = {}
        for step in bar:
            run.stage_seconds, run.step_spend = {}, {}
            run.iteration_started = time.perf_counter()
            checkpoint_now = _due(step, cfg.checkpoint_every, last)
            metrics = as_iteration(_listening(metis_iteration, stop), step)(
                run.run_id, step, _due(step, cfg.eval.every, last), checkpoint_now
            )
            if not checkpoint_now:  # (a checkpoint logs it, before it counts as complete)
                run.tracker.log_metrics({"time/iteration_s": run.iteration_seconds()}, step)
            bar.set_postfix_str(progress_line(metrics, cfg.eval.samples, short=True))
            if progress is not None:
                _artifact(update_progress_artifact, progress, 100 * (step + 1) / cfg.steps)
            tqdm.write(f"step {step:4d} | {progress_line(metrics, cfg.eval.samples)}")
            if stop.requested and step < last:
                if not checkpoint_now:
                    stages.checkpoint(run.run_id, step)
                status = "KILLED"
                raise Preempted(
                    f"stopped by SIGTERM after step {step}, checkpointed; continue with "
                    f"`metis train --resume {run_dir}`"
                )
        # The end of the run, each part safe to redo: a kill before run.json says finished
        # resumes after the last checkpoint and does it all again (nothing is lost)
        stages.plots(run.run_id)
        if not metrics:  # resumed after its last step: the summary reads that step's row
            metrics = dict(run.store.step_metrics(run.run_id)).get(last, {})
        _artifact(create_markdown_artifact, _summary(run, metrics), key=_key(run.run_id, "summary"))
        status = "FINISHED"
    finally:
        run.tracker.end(status)
        release(run.run_id)
    failpoint("finished", last)  # ended in MLflow and Prefect, not yet in run.json
    mark_finished(run_dir)
    return str(run_dir)


def _artifact(make: Any, *args: Any, **kwargs: Any) -> Any:
    """A Prefect artifact for a person to read; a server that refuses it does not stop training."""
    try:
        return make(*args, **kwargs)
    except Exception as err:  # (an HTTP error, a timeout: Prefect's client raises many kinds)
        tqdm.write(f"metis: Prefect did not take the artifact ({type(err).__name__}: {err})")
        return None


def _key(run_id: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for this run."""
    return re.sub(r"[^a-z0-9-]+", "-", f"metis-{what}-{run_id}".lower())[:100]


def _summary(run: Run, last: dict[str, float]) -> str:
    """The end-of-run artifact in Prefect's UI: where to browse the run, its final numbers."""
    uri, exp, mlflow_run = run.tracker.tracking_uri, run.tracker.experiment_id, run.tracker.run_id
    if uri.startswith(("http://", "https://")):
        where = f"[MLflow run {mlflow_run}]({uri}/#/experiments/{exp}/runs/{mlflow_run})"
    else:
        where = (
            f"MLflow run `{mlflow_run}` in `{uri}` (browse: `mlflow ui --backend-store-uri {uri}`)"
        )
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(last.items()) if "/" in k and (
        k.startswith(("eval/", "train/reward", "judge/")) or k == "cost/spent_tokens"))  # fmt: skip
    return (
        f"# {run.run_id} finished ({run.cfg.steps} iterations)\n\n{where}; run folder "
        f"`{run.run_dir}`.\n\n| metric (last iteration) | value |\n|---|---|\n{rows}\n"
    )


def _initial_evaluation(run: Run) -> None:
    """Held-out accuracy and judge audit of the untrained policy, as step -1. A run killed after
    it and before its first checkpoint has its row already: the totals it charged (the audit's
    rollouts) come back from that row instead of evaluating again."""
    done = dict(run.store.step_metrics(run.run_id)).get(-1)
    if done is not None:
        run.totals.update(
            (key.removeprefix("cost/"), value)
            for key, value in done.items()
            if key.startswith("cost/") and key.count("/") == 1 and key != "cost/spent_tokens"
        )
        return
    initial = stages.evaluate(run.run_id, -1) | stages.audit(run.run_id, -1)
    initial |= report.spend_metrics({}, "cost")  # the curves start at zero spend
    run.tracker.log_metrics(initial, -1)  # first: the steps row says it is done
    run.store.record_step(run.run_id, -1, initial)
    k = run.cfg.eval.samples
    tqdm.write(f"initial policy | heldout avg@{k} {initial[f'eval/avg_at_{k}']:.3f}")


def progress_line(m: dict[str, float], k: int, short: bool = False) -> str:
    parts = [
        f"reward {m['train/reward_mean']:.3f}",
        f"zero-var {m['train/zero_variance_fraction']:.2f}",
    ]
    if f"eval/avg_at_{k}" in m:
        parts.append(f"heldout avg@{k} {m[f'eval/avg_at_{k}']:.3f}")
    if "audit/spearman" in m:
        parts.append(f"audit rho {_signed(m['audit/spearman'])} lift {m['audit/top_b_lift']:.2f}")
    if "judge/selected/spearman" in m:
        parts.append(f"judge rho (selected) {_signed(m['judge/selected/spearman'])}")
        parts.append(f"parse-fail {m['judge/parse_failure_rate']:.0%}")
    if not short:
        times = " ".join(f"{k[5:-2]} {v:.1f}s" for k, v in m.items() if k.startswith("time/"))
        parts.append(times)
    return " | ".join(parts)


def _signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.2f}"
