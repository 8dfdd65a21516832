"""Each training iteration as a nested Prefect flow run named after its step ("step-0003"), so
the Prefect UI lists a run's iterations in order, each with its own stage tasks, timeline and
state.

Prefect finds a subflow again by its parent's tracking task run, keyed by the subflow function's
name and the count of calls so far in this flow run. When a crashed training flow run is run
again (the resume automation, Prefect's Retry), the count starts over, so a plain subflow would
hand the new attempt's first iteration the earlier attempt's step-0000 flow run: the step runs
again inside it, overwriting its history, or (where its tracking task run had finished) Prefect
returns its old state without running the step, skipping an iteration a resumed run must replay.
So the subflow's function is named after its step and the parent's attempt
(`iteration_step3_attempt2`): each attempt gets its own flow run per iteration, and earlier
attempts' stay as they ended. Those an attempt left running when its process died are marked
Crashed when the next attempt starts.

An iteration's flow run sends no heartbeats. Prefect 3.7 starts a heartbeat thread for every
flow run and, as the run ends, waits for it to notice in 1-second sleeps: each iteration ended
on the next whole second, 0.5 s lost on average (an empty iteration took 1.09-2.09 s for
0.3-1.55 s of work, against 0.45-1.70 s without). An iteration is far shorter than the
180-second heartbeat, the training flow run keeps its own, and an iteration left running by a
dead process is marked Crashed by the next attempt (`close_orphaned_iterations`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow
from prefect.settings import temporary_settings

R = TypeVar("R")
ITERATION_FLOW = "metis-iteration"
log = logging.getLogger(__name__)


def attempt() -> int:
    """Which run of this flow run this is (1 first, 2 after one retry or crash resume); 1 outside
    a flow run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    return max(1, run.run_count) if run is not None else 1


def as_iteration(fn: Callable[..., R], step: int) -> Callable[..., R]:
    """`fn` as the nested flow run of iteration `step` of this attempt (module docstring)."""

    @functools.wraps(fn)
    def iteration(*args: Any, **kwargs: Any) -> R:
        return fn(*args, **kwargs)

    iteration.__qualname__ = iteration.__name__ = f"iteration_step{step}_attempt{attempt()}"
    iteration_flow = flow(
        iteration,
        name=ITERATION_FLOW,
        flow_run_name=f"step-{step:04d}",
        log_prints=True,
        persist_result=False,
        validate_parameters=False,
    )

    @functools.wraps(fn)
    def without_heartbeats(*args: Any, **kwargs: Any) -> R:
        with temporary_settings(updates={"flows.heartbeat_frequency": None}):  # (docstring)
            return iteration_flow(*args, **kwargs)  # type: ignore[return-value]

    return without_heartbeats


def close_orphaned_iterations() -> int:
    """Mark Crashed the iteration flow runs of this flow run that an earlier attempt left
    unfinished (its process was killed: nothing reported their end); how many. Outside a flow
    run, or on a server that does not answer, nothing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.client.schemas.objects import TERMINAL_STATES, StateType
    from prefect.context import FlowRunContext
    from prefect.states import Crashed

    ctx = FlowRunContext.get()
    parent = ctx.flow_run if ctx is not None else None
    if parent is None or parent.run_count <= 1:
        return 0
    closed = 0
    try:
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(  # (the unfinished only: a run has many steps)
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id={"any_": [parent.id]},
                    state={"type": {"any_": [t for t in StateType if t not in TERMINAL_STATES]}},
                )
            )
            for child in children:
                message = f"its process died; attempt {parent.run_count} replays the step"
                client.set_flow_run_state(child.id, Crashed(message=message), force=True)
                closed += 1
    except Exception as err:  # (bookkeeping for the UI: never worth failing a resume for)
        log.warning("could not close earlier attempts' iterations: %s: %s", type(err).__name__, err)
    return closed
