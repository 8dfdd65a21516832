"""DeepSpeed trainer and vLLM engine side by side: each ZeRO stage updates every parameter, and
after a sync the engine's log-probs of a fixed sequence match the trainer's and differ from
before."""

import pytest
import torch

pytestmark = pytest.mark.integration

TOLERANCE = 1e-4  # both fp32; measured gaps are ~1e-6


@pytest.fixture(scope="module")
def engine(tiny_model):
    from metis_core.engine.vllm_engine import PolicyEngine

    eng = PolicyEngine(tiny_model, "float32", 512, seed=0)
    yield eng
    eng.close()


def max_gap(a, b):
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("zero_stage", "ppo_epochs"), [(0, 1), (2, 2)])
def test_update_then_sync(engine, tiny_model, zero_stage, ppo_epochs):
    from metis_core.config import TrainerConfig
    from metis_core.ports import JudgmentBatch, RolloutBatch
    from metis_core.trainer.policy_trainer import PolicyTrainer

    cfg = TrainerConfig(
        lr=1e-3, zero_stage=zero_stage, ppo_epochs=ppo_epochs, micro_batch_size=4, precision="fp32"
    )
    trainer = PolicyTrainer(tiny_model, cfg, max_response_tokens=8)
    engine.load_weights(trainer.named_weights())  # the engine may hold an earlier test's weights
    prompt = engine.tokenizer.encode("What is 2 + 3? The answer is", add_special_tokens=False)
    groups = engine.generate([prompt, prompt], n=4, temperature=1.0, max_tokens=8, seed=0)
    probe = prompt + groups[0][0].token_ids
    engine_before = engine.sequence_logprobs(probe)
    assert max_gap(engine_before, trainer.sequence_logprobs(probe)) < TOLERANCE

    params_before = {n: p.detach().clone() for n, p in trainer.named_weights()}
    rollouts = RolloutBatch(
        [prompt] * 8,
        [c.token_ids for g in groups for c in g],
        [0.75, -0.25, -0.25, -0.25, 0.5, -0.5, 0.5, -0.5],
    )
    judgments = JudgmentBatch(
        [prompt, prompt],
        [groups[0][1].token_ids[:3], groups[1][1].token_ids[:3]],
        [0.9, 0.1],
        baseline=0.5,
    )
    metrics = trainer.train_step(rollouts, judgments, lam=0.5)
    assert metrics["judge_loss"] != 0.0
    unchanged = [n for n, p in trainer.named_weights() if torch.equal(p, params_before[n])]
    assert not unchanged

    engine.load_weights(trainer.named_weights())
    engine_after = engine.sequence_logprobs(probe)
    assert max_gap(engine_after, trainer.sequence_logprobs(probe)) < TOLERANCE
    assert max_gap(engine_after, engine_before) > 1e-3


def test_the_judge_term_is_applied_once_whatever_ppo_epochs(tiny_model):
    """REINFORCE is on-policy: the judge's gradient enters the first epoch's step only, so its
    weight does not grow with ppo_epochs. Zero advantages leave the judge term alone in the loss."""
    from metis_core.config import TrainerConfig
    from metis_core.ports import JudgmentBatch, RolloutBatch
    from metis_core.trainer.policy_trainer import PolicyTrainer

    trainer = PolicyTrainer(
        tiny_model, TrainerConfig(ppo_epochs=3, micro_batch_size=4), max_response_tokens=8
    )
    grads: list[float] = []
    step = trainer.engine.step

    def recording_step(*args, **kwargs):
        grads.append(
            sum(
                float(p.grad.abs().sum())
                for p in trainer.engine.module.parameters()
                if p.grad is not None
            )
        )
        return step(*args, **kwargs)

    trainer.engine.step = recording_step
    prompt = [1, 500, 600, 700]
    rollouts = RolloutBatch([prompt] * 4, [[5, 6], [7, 8], [9], [10, 11]], [0.0] * 4)
    judgments = JudgmentBatch([prompt, prompt], [[30, 31], [32]], [1.0, 0.0], baseline=0.5)
    metrics = trainer.train_step(rollouts, judgments, lam=1.0)
    assert len(grads) == 3
    assert grads[0] > 0.0
    assert grads[1] == grads[2] == 0.0
    assert metrics["judge_loss"] != 0.0
