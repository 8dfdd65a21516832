"""Each iteration is a nested flow run named after its step, and a training flow run that runs
again (a retry, the crash automation) runs every iteration it reaches again instead of being
handed the earlier attempt's completed ones. A real temporary Prefect server; the iteration
itself is a counter."""

from collections import Counter

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.context import FlowRunContext
from prefect.states import Running
from prefect.testing.utilities import prefect_test_harness

from flows.iterations import ITERATION_FLOW, as_iteration, close_orphaned_iterations


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=240):
        yield


def _children(parent_id):
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [parent_id]})
        )
        flows = {f.id: f.name for f in client.read_flows()}
    return [(flows[r.flow_id], r.name, r.state.type.value) for r in runs]


def test_a_rerun_runs_its_iterations_again(prefect_server):
    ran: Counter = Counter()
    parent: dict = {}

    def iteration(step: int) -> int:
        ran[step] += 1
        return step * 10

    @flow(retries=1, retry_delay_seconds=0, persist_result=False)
    def training() -> list[int]:
        ctx = FlowRunContext.get()
        parent["id"] = ctx.flow_run.id
        out = [as_iteration(iteration, step)(step) for step in range(3)]
        if ctx.flow_run.run_count == 1:
            raise RuntimeError("crashed after step 2, whose checkpoint was step 0's")
        return out

    assert training() == [0, 10, 20]
    assert ran == {0: 2, 1: 2, 2: 2}  # the retry replayed every step, not the old states
    children = _children(parent["id"])
    assert Counter((f, n) for f, n, _ in children) == {
        (ITERATION_FLOW, "step-0000"): 2,
        (ITERATION_FLOW, "step-0001"): 2,
        (ITERATION_FLOW, "step-0002"): 2,
    }
    assert {state for *_, state in children} == {"COMPLETED"}


def test_a_rerun_closes_the_iterations_its_killed_attempt_left_running(prefect_server):
    parent: dict = {}

    @flow(retries=1, retry_delay_seconds=0, persist_result=False)
    def training() -> int:
        ctx = FlowRunContext.get()
        parent["id"] = ctx.flow_run.id
        if ctx.flow_run.run_count == 1:  # as a SIGKILL mid-step leaves it: still Running
            as_iteration(lambda: None, 0)()
            with get_client(sync_client=True) as client:
                (child,) = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [ctx.flow_run.id]})
                )
                client.set_flow_run_state(child.id, Running(), force=True)
            raise RuntimeError("killed")
        return close_orphaned_iterations()

    assert training() == 1
    assert _children(parent["id"]) == [(ITERATION_FLOW, "step-0000", "CRASHED")]


def test_outside_a_flow_run_nothing_is_closed():
    assert close_orphaned_iterations() == 0


def test_an_iteration_sends_no_heartbeats_and_its_parent_keeps_them(prefect_server):
    from prefect.settings import get_current_settings

    seen: dict = {}

    def iteration(step: int) -> None:
        seen["iteration"] = get_current_settings().flows.heartbeat_frequency

    @flow(persist_result=False)
    def training() -> None:
        seen["before"] = get_current_settings().flows.heartbeat_frequency
        as_iteration(iteration, 0)(0)
        seen["after"] = get_current_settings().flows.heartbeat_frequency

    training()
    # Prefect's heartbeat thread ends in 1-second sleeps: an iteration ended on a whole second
    assert seen["iteration"] is None
    assert seen["before"] == seen["after"] is not None
