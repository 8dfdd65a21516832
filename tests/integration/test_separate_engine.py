"""The vLLM engine in a process of its own (model.engine=separate, metis_core/engine/remote.py)
against the in-process one on the tiny model: the same completions for the same seed, the same
log-probs after the same weight push, a worker that ends with close() or with its parent, and a
training run on it whose sync check holds."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from metis_core.store.outcomes import OutcomeStore
from tests.conftest import (
    REPO,
    alive,
    only_run_dir,
    run_metis,
    set_args,
    tiny_overrides,
    wait_gone,
)

pytestmark = pytest.mark.integration

TOLERANCE = 3e-4  # log-probs of the same fp32 weights in two engines


@pytest.fixture(scope="module")
def engines(tiny_model):
    from metis_core.engine.remote import RemoteEngine
    from metis_core.engine.vllm_engine import PolicyEngine

    local = PolicyEngine(tiny_model, "float32", 512, seed=0)
    remote = RemoteEngine(tiny_model, "float32", 512, seed=0)
    yield local, remote
    remote.close()
    local.close()


def max_gap(a, b):
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_the_same_seed_gives_the_same_completions(engines):
    local, remote = engines
    texts = ["What is 2 + 3? The answer is", "Name a colour:"]
    prompts = [local.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert [remote.tokenizer.encode(t, add_special_tokens=False) for t in texts] == prompts
    kwargs = dict(n=3, temperature=1.0, top_p=0.9, max_tokens=12, seed=11)
    here, there = local.generate(prompts, **kwargs), remote.generate(prompts, **kwargs)
    assert [[c.token_ids for c in g] for g in there] == [[c.token_ids for c in g] for g in here]
    assert [[c.text for c in g] for g in there] == [[c.text for c in g] for g in here]
    for g_here, g_there in zip(here, there, strict=True):
        for a, b in zip(g_here, g_there, strict=True):
            assert max_gap(a.logprobs, b.logprobs) < TOLERANCE
    constrained = dict(n=2, temperature=1.0, max_tokens=8, seed=3, regex=r"\d+ apples")
    assert remote.generate(prompts, **constrained) == local.generate(prompts, **constrained)
    allowed = [[local.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" yes", " no")]]
    allowed *= 2
    near = remote.next_token_logprobs(prompts, allowed, 1.0)
    far = local.next_token_logprobs(prompts, allowed, 1.0)
    assert [sorted(d) for d in near] == [sorted(d) for d in far]
    assert all(abs(a[t] - b[t]) < TOLERANCE for a, b in zip(near, far, strict=True) for t in a)


def test_pushed_weights_give_the_in_process_log_probs(engines, tiny_model):
    from transformers import AutoModelForCausalLM

    local, remote = engines
    probe = local.tokenizer.encode("Sync probe: 12 + 30 = 42.", add_special_tokens=False)
    before = remote.sequence_logprobs(probe)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    weights = [
        (n, p.detach() + 0.05 * torch.randn(p.shape, generator=gen))
        for n, p in model.named_parameters()
    ]
    local.load_weights(iter(weights))
    remote.load_weights(iter(weights))
    after_local, after_remote = local.sequence_logprobs(probe), remote.sequence_logprobs(probe)
    assert max_gap(after_remote, after_local) < TOLERANCE
    assert max_gap(after_remote, before) > 1e-2


def test_the_worker_is_another_process_and_close_ends_it(tiny_model):
    import os

    from metis_core.engine.remote import RemoteEngine

    engine = RemoteEngine(tiny_model, "float32", 512, seed=0)
    assert engine.pid != os.getpid() and alive(engine.pid)
    engine.close()
    assert engine.process.exitcode == 0 and not alive(engine.pid)


PARENT = """
import sys
from metis_core.engine.remote import RemoteEngine
engine = RemoteEngine(sys.argv[1], "float32", 512, seed=0)
print(engine.pid, flush=True)
prompt = engine.tokenizer.encode("Count: 1 2 3", add_special_tokens=False)
# busy for minutes when the kill comes: only the worker's watchdog can end it in time
engine.generate([prompt] * 32, n=8, temperature=1.0, max_tokens=400, seed=0)
"""


def test_the_worker_dies_with_its_parent(tiny_model):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tiny_model)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        worker = int(parent.stdout.readline())
        assert alive(worker)
        time.sleep(2)  # the generate call is under way
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
    assert wait_gone(worker, 15), "the engine process outlived its parent"


def test_a_training_run_on_the_separate_engine(tiny_model, tmp_path):
    out = tmp_path / "runs"
    overrides = tiny_overrides(tiny_model, out, steps=2, extra=["model.engine=separate"])
    run_metis(tmp_path, ["train", *set_args(overrides)])
    run_dir = only_run_dir(out)
    metrics = dict(OutcomeStore(run_dir / "history.duckdb").step_metrics(run_dir.name))
    gaps = {step: m["sync/max_logprob_gap"] for step, m in metrics.items() if step >= 0}
    assert sorted(gaps) == [0, 1]
    # the engine in its own process holds what the trainer holds, to float rounding
    assert all(gap < 1e-3 for gap in gaps.values()), gaps
