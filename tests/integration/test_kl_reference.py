"""trainer.kl_coef > 0: a frozen copy of the starting policy is loaded as the KL reference, the
KL term is zero while the policy equals it, and with no task signal the term alone pulls a
moved policy back towards it."""

import pytest
import torch

pytestmark = pytest.mark.integration

PROMPT = [1, 500, 600, 700, 800]
RESPONSES = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]


def test_the_kl_term_pulls_the_policy_back_to_its_reference(tiny_model):
    from metis_core.config import TrainerConfig
    from metis_core.ports import RolloutBatch
    from metis_core.trainer.policy_trainer import PolicyTrainer

    cfg = TrainerConfig(lr=3e-3, micro_batch_size=4, kl_coef=1.0, precision="fp32")
    trainer = PolicyTrainer(tiny_model, cfg, max_response_tokens=8)
    reference = trainer.reference
    assert reference is not None
    assert not any(p.requires_grad for p in reference.parameters())
    frozen = {n: p.detach().clone() for n, p in reference.named_parameters()}
    # zero advantages: the task term has no gradient, so only the KL term moves the policy
    rollouts = RolloutBatch([PROMPT] * 4, RESPONSES, [0.0] * 4)

    assert trainer.train_step(rollouts, None, lam=0.0)["kl"] == pytest.approx(0.0, abs=1e-7)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.engine.module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p.device))
    kl = [trainer.train_step(rollouts, None, lam=0.0)["kl"] for _ in range(8)]

    assert kl[0] > 1e-3  # the moved policy is measurably away from its reference
    assert kl[-1] < 0.5 * kl[0], kl  # ... and the KL term alone brought it back
    # the reference itself never moved
    assert all(torch.equal(p, frozen[n]) for n, p in reference.named_parameters())
