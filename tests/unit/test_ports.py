"""The adapters satisfy the ports the stages use (metis_core/ports.py), checked by inspecting
their classes: no vLLM, DeepSpeed, DuckDB or MLflow is started."""

from typing import Protocol

import pytest

from metis_core import ports
from tests.conftest import port_mismatches


def adapters():
    from transformers import PreTrainedTokenizerBase

    from metis_core.engine.remote import RemoteEngine
    from metis_core.engine.vllm_engine import PolicyEngine
    from metis_core.store.outcomes import OutcomeStore
    from metis_core.tracking.mlflow_tracker import Tracker
    from metis_core.trainer.group import TrainerGroup
    from metis_core.trainer.policy_trainer import PolicyTrainer

    return [
        (PolicyEngine, ports.Engine),
        (RemoteEngine, ports.Engine),
        (PolicyTrainer, ports.Trainer),
        (TrainerGroup, ports.Trainer),
        (OutcomeStore, ports.Store),
        (Tracker, ports.Tracker),
        (PreTrainedTokenizerBase, ports.Tokenizer),
    ]


@pytest.mark.parametrize(
    ("adapter", "port"), adapters(), ids=lambda c: c.__name__ if isinstance(c, type) else str(c)
)
def test_the_adapter_satisfies_its_port(adapter, port):
    assert port_mismatches(adapter, port) == []


class Port(Protocol):
    size: int

    def call(self, prompt: list[int], /, *, n: int, seed: int = 0) -> list[str]: ...


def test_the_check_sees_what_breaks_a_port():
    class Fits:
        def __init__(self) -> None:
            self.size = 1

        def call(self, ids, n, seed=0, temperature=1.0, **kwargs):
            return []

    class Breaks:
        def call(self, ids, *, count, seed):
            return []

    assert port_mismatches(Fits, Port) == []
    assert port_mismatches(Breaks, Port) == [
        "Breaks has no attribute size",
        "Breaks.call: takes no argument 'n'",
        "Breaks.call: requires seed, which the port leaves out",
        "Breaks.call: requires count, which the port never passes",
    ]
