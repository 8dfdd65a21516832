"""How a metis-train flow run ends in Prefect: stopped by SIGTERM it is Crashed, named Preempted
(the resume automation's trigger), a real error is Failed (never resumed by itself), and a run
a person cancelled is not turned into a preemption. The flow runs on a temporary Prefect server;
the training itself is replaced."""

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.states import Cancelling
from prefect.testing.utilities import prefect_test_harness

import flows.train as train_flow
from tests.conftest import REPO


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=240):
        yield


@pytest.fixture
def run_flow(prefect_server, tmp_path, monkeypatch):
    """Run the metis-train flow with `body` in place of the training; its final state."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no machine slot to wait for
    monkeypatch.setattr(train_flow, "_prepare", lambda *args: str(tmp_path))
    monkeypatch.setattr(train_flow, "is_finished", lambda run_dir: False)

    def run(body):
        monkeypatch.setattr(train_flow, "_train", lambda run_dir, stop: body())
        return train_flow.train(return_state=True)

    return run


def test_an_ordinary_exception_fails_the_run(run_flow):
    def broken():
        raise ValueError("a bug in the training")

    state = run_flow(broken)
    assert state.type.value == "FAILED" and state.name == "Failed"
    with pytest.raises(ValueError):
        state.result()


def test_a_preempted_run_ends_crashed_named_preempted(run_flow):
    def preempted():
        raise train_flow.Preempted("stopped by SIGTERM after step 3, checkpointed")

    state = run_flow(preempted)
    assert state.type.value == "CRASHED" and state.name == train_flow.PREEMPTED
    assert "after step 3" in state.message
    with pytest.raises(train_flow.Preempted):  # `metis train` still exits 143 on it
        state.result()


def test_a_cancelled_run_is_not_made_a_preemption(run_flow):
    def cancelled():  # a person cancels; the worker's SIGTERM stops the run
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(FlowRunContext.get().flow_run.id, Cancelling(), force=True)
        raise train_flow.Preempted("stopped by SIGTERM after step 0, checkpointed")

    state = run_flow(cancelled)
    assert state.type.value == "CANCELLING"  # the worker makes it Cancelled once it has exited


def test_a_worker_started_process_reports_preempted_and_exits_at_once(run_flow, monkeypatch):
    """Not through the engine's teardown, in which the automation would already have started the
    run again beside it, and with 0: the worker must not report a crash of the new attempt."""
    exits, ids = [], []

    def exit_now(code):
        exits.append(code)
        raise _Exited

    def preempted():
        ids.append(FlowRunContext.get().flow_run.id)
        monkeypatch.setenv("PREFECT__FLOW_RUN_ID", str(ids[0]))
        raise train_flow.Preempted("stopped by SIGTERM after step 1, checkpointed")

    monkeypatch.setattr(train_flow.os, "_exit", exit_now)
    with pytest.raises(_Exited):
        run_flow(preempted)
    assert exits == [0]
    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(ids[0]), key=lambda s: s.timestamp)
    names = [s.name for s in states]
    assert names[names.index("Running") + 1] == train_flow.PREEMPTED, names


class _Exited(BaseException):
    """Stands for the process's end in the test (the engine then records a crash: no matter)."""


def _resume_trigger():
    """The automation's trigger as Prefect's server reads it."""
    from prefect.server.events.schemas.automations import EventTrigger

    (automation,) = yaml.safe_load((REPO / "infra/prefect/automations.yaml").read_text())[
        "automations"
    ]
    return EventTrigger.model_validate(automation["trigger"])


def _state_event(flow: str, deployment: bool):
    """What Prefect's server emits on a flow run's state change: the run as the resource, its
    flow (and deployment, work pool, if it has one) as related resources."""
    from prefect.server.events.schemas.events import RelatedResource, Resource

    def related(role: str, name: str) -> RelatedResource:
        return RelatedResource.model_validate(
            {"prefect.resource.id": f"prefect.{role}.1", "prefect.resource.role": role,
             "prefect.resource.name": name}
        )  # fmt: skip

    resources = [related("flow", flow)]
    if deployment:
        resources += [related("deployment", "default"), related("work-pool", "metis-cpu")]
    run = Resource.model_validate({"prefect.resource.id": "prefect.flow-run.1"})
    return run, resources


def test_the_resume_automation_takes_crashed_and_preempted_deployment_runs_only():
    trigger = _resume_trigger()
    expected = set(trigger.expect)
    assert expected == {"prefect.flow-run.Crashed", f"prefect.flow-run.{train_flow.PREEMPTED}"}
    assert trigger.covers_resources(*_state_event("metis-train", deployment=True))
    # not another flow's runs
    assert not trigger.covers_resources(*_state_event("metis-eval", deployment=True))
    # not a run no worker can pick up again (an in-process `metis train`, a comparison's runs):
    # put back on a queue it would stay Scheduled forever; they resume with --resume
    assert not trigger.covers_resources(*_state_event("metis-train", deployment=False))
