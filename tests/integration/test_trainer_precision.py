"""trainer.precision=bf16 (DeepSpeed bf16 weights, fp32 master weights and optimiser) takes the
step fp32 takes: same loss, gradients pointing the same way, the same update to the master
weights up to bf16 rounding; a float32 engine is sent the fp32 masters (the sync-check log-probs
are float32 arithmetic on them), a bf16 engine the trainer's stochastically rounded copies."""

import pytest
import torch

pytestmark = pytest.mark.integration

PROMPT = [1, 500, 600, 700, 800]
RESPONSES = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
ADVANTAGES = [0.75, -0.25, 0.5, -1.0]


def one_step(tiny_model, precision: str, **settings) -> dict:
    from metis_core.config import TrainerConfig
    from metis_core.ports import JudgmentBatch, RolloutBatch
    from metis_core.trainer.policy_trainer import PolicyTrainer

    cfg = TrainerConfig(lr=1e-3, micro_batch_size=4, precision=precision, **settings)
    trainer = PolicyTrainer(tiny_model, cfg, max_response_tokens=8)
    params = dict(trainer.engine.module.named_parameters())
    # The weights the optimiser steps: DeepSpeed's fp32 copies under bf16, the parameters in fp32.
    optimizer = trainer.engine.optimizer
    masters = {id(p): p for p in params.values()}
    for low, high in zip(
        getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", []), strict=True
    ):
        masters.update({id(lp): hp for lp, hp in zip(low, high, strict=True)})
    assert all(masters[id(p)].dtype == torch.float32 for p in params.values())
    before = {n: masters[id(p)].detach().clone() for n, p in params.items()}
    grads: dict[str, torch.Tensor] = {}
    step = trainer.engine.step

    def recording_step(*args, **kwargs):
        grads.update({n: p.grad.float().clone() for n, p in params.items()})
        return step(*args, **kwargs)

    trainer.engine.step = recording_step
    rollouts = RolloutBatch([PROMPT] * 4, RESPONSES, ADVANTAGES)
    judgments = JudgmentBatch([PROMPT, PROMPT], [[30, 31], [32]], [1.0, 0.0], baseline=0.5)
    metrics = trainer.train_step(rollouts, judgments, lam=0.5)
    return {
        "metrics": metrics,
        "dtypes": {p.dtype for p in params.values()},
        "grad": torch.cat([grads[n].flatten() for n in params]),
        "delta": torch.cat([(masters[id(p)] - before[n]).flatten() for n, p in params.items()]),
        "after": torch.cat([masters[id(p)].flatten() for p in params.values()]),
        "copies": torch.cat([p.detach().float().flatten() for p in params.values()]),
        "sent": {n: w.clone() for n, w in trainer.named_weights()},
        "probe": trainer.sequence_logprobs(PROMPT + RESPONSES[2]),
    }


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_a_bf16_step_follows_the_fp32_step(tiny_model):
    fp32, bf16 = one_step(tiny_model, "fp32"), one_step(tiny_model, "bf16")
    assert fp32["dtypes"] == {torch.float32}
    assert bf16["dtypes"] == {torch.bfloat16}  # the bf16 path, not fp32 under another name
    for key in ("task_loss", "judge_loss"):
        assert bf16["metrics"][key] == pytest.approx(fp32["metrics"][key], rel=0.02, abs=1e-4)
    assert float(bf16["grad"].norm()) == pytest.approx(float(fp32["grad"].norm()), rel=0.05)
    assert cosine(bf16["grad"], fp32["grad"]) > 0.99
    # The master weights move as fp32's do (Adam's first step is about lr * sign(grad), so
    # entries whose tiny gradient flips sign under bf16 rounding differ; most agree).
    assert bf16["delta"].abs().sum() > 0
    assert cosine(bf16["delta"], fp32["delta"]) > 0.9
    # The engine is sent the fp32 master weights, not their bf16 copies (which an lr-sized
    # update mostly leaves unchanged), and the sync probe computes on them in float32.
    sent = torch.cat([w.flatten() for w in bf16["sent"].values()])
    assert sent.dtype == torch.float32
    assert torch.equal(sent, bf16["after"])
    gap = max(abs(a - b) for a, b in zip(bf16["probe"], fp32["probe"], strict=True))
    assert gap < 0.15  # measured 0.065 after this lr=1e-3 step on the tiny model


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_the_bf16_weights_are_roundings_of_the_masters(tiny_model, rounding):
    """After a step, each bf16 weight is its fp32 master rounded: to nearest, or stochastically
    (one of the two bf16 neighbours, and then not always the nearer one)."""
    step = one_step(tiny_model, "bf16", bf16_rounding=rounding)
    masters, copies = step["after"], step["copies"]
    nearest = masters.bfloat16().float()
    if rounding == "nearest":
        assert torch.equal(copies, nearest)
        return
    low = (masters.view(torch.int32) & ~0xFFFF).view(torch.float32)
    high = ((masters.view(torch.int32) & ~0xFFFF) + 0x10000).view(torch.float32)
    assert bool(((copies == low) | (copies == high)).all())
    away = float((copies != nearest).float().mean())
    assert 0.1 < away < 0.5, away  # about a quarter when the dropped bits are uniform


def test_the_sync_probe_is_float32_arithmetic_on_the_sent_weights(tiny_model):
    """An fp32 model holding exactly the weights the bf16 trainer sends gives the trainer's probe
    log-probs: what a float32 engine loaded with them computes."""
    from transformers import AutoModelForCausalLM

    from metis_core.config import TrainerConfig
    from metis_core.trainer.policy_trainer import PolicyTrainer

    trainer = PolicyTrainer(
        tiny_model, TrainerConfig(precision="bf16", micro_batch_size=4), max_response_tokens=8
    )
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    reference.load_state_dict(dict(trainer.named_weights()), strict=False)
    ids = torch.tensor([PROMPT + RESPONSES[2]])
    with torch.no_grad():
        expected = torch.log_softmax(reference(input_ids=ids).logits[0, :-1].float(), dim=-1)
    expected = expected.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    probe = trainer.sequence_logprobs(ids[0].tolist())
    assert max(abs(a - b) for a, b in zip(probe, expected.tolist(), strict=True)) < 1e-4
    assert {p.dtype for p in trainer.engine.module.parameters()} == {torch.bfloat16}


def test_a_bf16_trainer_resumed_from_its_checkpoint_takes_the_same_next_step(tiny_model, tmp_path):
    """Checkpointed between two steps and loaded into a fresh trainer, precision=bf16 takes the
    second step exactly as the uninterrupted trainer did: the fp32 masters, AdamW's state, the
    bf16 copies and the step count (which seeds the stochastic rounding) all come back."""
    from metis_core.config import TrainerConfig
    from metis_core.ports import JudgmentBatch, RolloutBatch
    from metis_core.trainer.policy_trainer import PolicyTrainer

    cfg = TrainerConfig(lr=1e-3, micro_batch_size=4, precision="bf16")
    rollouts = RolloutBatch([PROMPT] * 4, RESPONSES, ADVANTAGES)
    judgments = JudgmentBatch([PROMPT, PROMPT], [[30, 31], [32]], [1.0, 0.0], baseline=0.5)

    def state(trainer: PolicyTrainer) -> dict[str, torch.Tensor]:
        module = trainer.engine.module
        copies = {f"copy.{n}": p.detach().clone() for n, p in module.named_parameters()}
        return copies | {f"master.{n}": w.clone() for n, w in trainer.named_weights()}

    first = PolicyTrainer(tiny_model, cfg, max_response_tokens=8)
    first.train_step(rollouts, judgments, lam=0.5)
    first.save_checkpoint(tmp_path, "step-0", {"step": 0})
    saved = state(first)
    first.train_step(rollouts, judgments, lam=0.5)
    expected = state(first)

    resumed = PolicyTrainer(tiny_model, cfg, max_response_tokens=8)
    assert resumed.load_checkpoint(tmp_path, "step-0")["step"] == 0
    loaded = state(resumed)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    resumed.train_step(rollouts, judgments, lam=0.5)
    got = state(resumed)
    # the second step moved the weights, and the resumed trainer moved them the same way
    assert not all(torch.equal(expected[k], v) for k, v in saved.items())
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_what_each_engine_dtype_is_sent(tiny_model, precision):
    """A float32 engine gets the fp32 masters. A bf16 engine gets, from a bf16 trainer with
    stochastic copies, those very copies (it then samples the policy the trainer computes), and
    from an fp32 trainer a stochastic rounding of the weights: each one of its two bf16
    neighbours."""
    from metis_core.config import TrainerConfig
    from metis_core.ports import RolloutBatch
    from metis_core.trainer.policy_trainer import PolicyTrainer

    cfg = TrainerConfig(lr=1e-3, micro_batch_size=4, precision=precision)
    trainer = PolicyTrainer(tiny_model, cfg, max_response_tokens=8)
    trainer.train_step(RolloutBatch([PROMPT] * 4, RESPONSES, ADVANTAGES), None, lam=0.0)
    masters = {n: w.clone() for n, w in trainer.named_weights()}
    fp32 = dict(trainer.engine_weights("float32", step=0))
    assert fp32.keys() == masters.keys()
    assert all(torch.equal(fp32[n], w) for n, w in masters.items())
    bf16 = dict(trainer.engine_weights("bfloat16", step=0))
    assert bf16.keys() == masters.keys() and {w.dtype for w in bf16.values()} == {torch.bfloat16}
    if precision == "bf16":
        copies = dict(trainer.engine.module.named_parameters())
        assert all(torch.equal(bf16[n], copies[n]) for n in bf16)
    for n, w in masters.items():
        low = (w.view(torch.int32) & ~0xFFFF).view(torch.float32)
        high = ((w.view(torch.int32) & ~0xFFFF) + 0x10000).view(torch.float32)
        sent = bf16[n].float()
        assert bool(((sent == low) | (sent == high)).all()), n
