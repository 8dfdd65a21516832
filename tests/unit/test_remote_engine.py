"""RemoteEngine's process plumbing (metis_core/engine/remote.py) around a fake engine: calls and
answers, weights through the shared buffer, errors with the worker's traceback, the worker's end.
The same engine with vLLM inside: tests/integration/test_separate_engine.py."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from metis_core.ports import Completion
from tests.conftest import REPO, alive, wait_gone


class FakeEngine:
    """Answers from the last weights it was given: sequence_logprobs is [sum of each tensor]."""

    def __init__(self, model_dir, dtype, max_model_len, seed):
        self.seed = seed
        self.sums: list[float] = []

    def generate(self, prompt_token_ids, *, n, temperature, top_p=1.0, max_tokens, stop=(),
                 logprobs=True, top_logprobs=0, regex=None, seed):  # fmt: skip
        return [[Completion([*p, seed + i], f"r{i}", [-0.5]) for i in range(n)]
                for p in prompt_token_ids]  # fmt: skip

    def next_token_logprobs(self, prompt_token_ids, allowed_token_ids, temperature):
        return [{t: -1.0 for t in allowed} for allowed in allowed_token_ids]

    def sequence_logprobs(self, token_ids):
        if not token_ids:
            raise ValueError("an empty probe")
        if token_ids == [-1]:  # busy: only the watchdog can end the worker now
            time.sleep(600)
        return self.sums

    def load_weights(self, named_tensors):
        self.sums = [float(t.double().sum()) for _, t in named_tensors]

    def close(self):
        pass


@pytest.fixture(scope="module")
def tokenizer_dir():
    from metis_core.model.weights import embedded_tokenizer

    return embedded_tokenizer()


@pytest.fixture(scope="module")
def engine(tokenizer_dir):
    from metis_core.engine.remote import RemoteEngine

    eng = RemoteEngine(tokenizer_dir, "float32", 64, seed=3, engine_class=FakeEngine)
    yield eng
    eng.close()


def test_calls_reach_the_worker_and_answers_come_back(engine):
    assert engine.pid != os.getpid() and alive(engine.pid)
    groups = engine.generate([[1, 2], [3]], n=2, temperature=1.0, max_tokens=4, seed=10)
    assert groups == [
        [Completion([1, 2, 10], "r0", [-0.5]), Completion([1, 2, 11], "r1", [-0.5])],
        [Completion([3, 10], "r0", [-0.5]), Completion([3, 11], "r1", [-0.5])],
    ]
    assert engine.next_token_logprobs([[1]], [[5, 6]], 1.0) == [{5: -1.0, 6: -1.0}]
    assert engine.tokenizer.decode(engine.tokenizer.encode("hello", add_special_tokens=False))


def test_weights_arrive_through_the_shared_buffer(engine):
    gen = torch.Generator().manual_seed(0)
    small = [("a", torch.randn(3, 5, generator=gen)), ("b", torch.arange(7.0).bfloat16())]
    engine.load_weights(iter(small))
    assert engine.sequence_logprobs([1]) == [float(t.double().sum()) for _, t in small]
    buffer = engine._buffer
    changed = [(n, t * 2) for n, t in small]  # same layout: the buffer is reused
    engine.load_weights(changed)
    assert engine._buffer is buffer
    assert engine.sequence_logprobs([1]) == [float(t.double().sum()) for _, t in changed]
    bigger = [*small, ("c", torch.ones(1000, 10))]  # no longer fits: a new buffer goes across
    engine.load_weights(bigger)
    assert engine._buffer is not buffer
    assert engine.sequence_logprobs([1]) == [float(t.double().sum()) for _, t in bigger]


def test_a_worker_error_is_raised_here_with_its_traceback(engine):
    with pytest.raises(ValueError, match="an empty probe") as raised:
        engine.sequence_logprobs([])
    assert "in sequence_logprobs" in str(raised.value.__cause__)
    assert engine.sequence_logprobs([1])  # and the worker carries on


def test_close_stops_the_worker(tokenizer_dir):
    from metis_core.engine.remote import EngineProcessDied, RemoteEngine

    eng = RemoteEngine(tokenizer_dir, "float32", 64, seed=0, engine_class=FakeEngine)
    pid = eng.pid
    eng.close()
    assert not eng.process.is_alive() and eng.process.exitcode == 0 and not alive(pid)
    with pytest.raises(EngineProcessDied):
        eng.sequence_logprobs([1])
    eng.close()  # a second close is harmless


PARENT = """
import sys, time
from metis_core.engine.remote import RemoteEngine
from tests.unit.test_remote_engine import FakeEngine
engine = RemoteEngine(sys.argv[1], "float32", 64, seed=0, engine_class=FakeEngine)
print(engine.pid, flush=True)
if sys.argv[2] == "busy":
    engine.sequence_logprobs([-1])
time.sleep(600)
"""


@pytest.mark.parametrize("worker_state", ["idle", "busy"])
def test_the_worker_dies_with_its_parent(tokenizer_dir, worker_state):
    """Idle, the worker sees its pipe close; busy with a call, its watchdog sees the parent go."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tokenizer_dir), worker_state],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        worker = int(parent.stdout.readline())
        assert alive(worker)
        time.sleep(1)  # the call is under way
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
    assert wait_gone(worker, 10), "the engine process outlived its parent"
