import math

import pytest
import torch

from metis_core.algorithms import (
    MovingAverageBaseline,
    agg_loss,
    group_advantages,
    is_zero_variance,
    judge_loss,
    judge_reward,
    kl_k3,
    logprob_mismatch,
    pass_at_k,
    policy_token_loss,
    realised_variance,
    truncated_is_weights,
)


def test_realised_variance_is_population_variance():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    # p(1-p): 0.5 -> 0.25, 1 -> 0, 0.25 -> 0.1875
    assert torch.allclose(realised_variance(rewards), torch.tensor([0.25, 0.0, 0.1875]))


def test_realised_variance_continuous_rewards():
    rewards = torch.tensor([[0.2, 0.4, 0.9]])
    mean = (0.2 + 0.4 + 0.9) / 3
    expected = ((0.2 - mean) ** 2 + (0.4 - mean) ** 2 + (0.9 - mean) ** 2) / 3
    assert realised_variance(rewards).item() == pytest.approx(expected)


def test_group_advantages_are_mean_centred_without_std_division():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.0, 0.0, 0.0, 0.0]]))


def test_agg_loss_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm", max_tokens=5).item() == pytest.approx(
        (6 / 5 + 4 / 5) / 2
    )
    with pytest.raises(ValueError):
        agg_loss(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError):
        agg_loss(loss, mask, "bogus")  # type: ignore[arg-type]


def test_masked_tokens_do_not_count():
    loss = torch.tensor([[1.0, 100.0]])
    mask = torch.tensor([[1.0, 0.0]])
    assert agg_loss(loss, mask, "token-mean").item() == 1.0


def test_policy_loss_on_policy_is_minus_advantage_and_gradient_matches():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([0.5])
    loss, clipped = policy_token_loss(lp, lp.detach(), adv, clip_eps=0.2)
    assert torch.allclose(loss, torch.tensor([[-0.5, -0.5]]))
    assert not clipped.any()
    loss.sum().backward()
    # d/dlp of -A*exp(lp-old) at lp=old is -A
    assert torch.allclose(lp.grad, torch.tensor([[-0.5, -0.5]]))


def test_policy_loss_clips_large_ratio_for_positive_advantage():
    old = torch.tensor([[0.0]])
    lp = torch.tensor([[math.log(2.0)]], requires_grad=True)  # ratio 2
    loss, clipped = policy_token_loss(lp, old, torch.tensor([1.0]), clip_eps=0.2)
    assert loss.item() == pytest.approx(-1.2)
    assert clipped.all()
    loss.sum().backward()
    assert lp.grad.item() == 0.0  # clipped: no gradient pushes the ratio further


def test_policy_loss_negative_advantage_keeps_unclipped_when_worse():
    old = torch.tensor([[0.0]])
    lp = torch.tensor([[math.log(2.0)]])
    loss, _ = policy_token_loss(lp, old, torch.tensor([-1.0]), clip_eps=0.2)
    assert loss.item() == pytest.approx(2.0)  # max(2.0, 1.2)


def test_kl_k3_zero_at_equal_and_positive_elsewhere():
    lp = torch.tensor([-1.0, -2.0])
    assert torch.allclose(kl_k3(lp, lp), torch.zeros(2))
    assert (kl_k3(lp, lp + 0.3) > 0).all()


def test_judge_reward_by_hand():
    v_hat = torch.tensor([0.25, 0.0, 0.1, 0.2])
    v = torch.tensor([0.25, 0.25, 0.05, 0.0])
    parsed = torch.tensor([True, True, True, False])
    r = judge_reward(v_hat, v, parsed)
    assert torch.allclose(r, torch.tensor([1.0, 0.0, 1 - (4 * 0.05) ** 2, 0.0]))


def test_judge_loss_is_reinforce_with_baseline():
    lp_sums = torch.tensor([-2.0, -4.0], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0])
    loss = judge_loss(lp_sums, rewards, baseline=0.5)
    assert loss.item() == pytest.approx(-((0.5 * -2.0) + (-0.5 * -4.0)) / 2)
    loss.backward()
    assert torch.allclose(lp_sums.grad, torch.tensor([-0.25, 0.25]))


def test_moving_average_baseline_state_round_trip():
    b = MovingAverageBaseline(momentum=0.5)
    assert b.current(0.8) == 0.8
    b.update(0.8)
    b.update(0.4)
    assert b.value == pytest.approx(0.6)
    c = MovingAverageBaseline()
    c.load_state_dict(b.state_dict())
    assert (c.momentum, c.value) == (0.5, pytest.approx(0.6))


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_spearman_and_judge_quality():
    from metis_core.metrics import judge_quality, spearman

    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)  # tie-averaged ranks
    assert math.isnan(spearman([1, 1], [1, 2]))
    q = judge_quality([0.1, 0.2, 0.0], [0.0, 0.25, 0.1], [True, True, False])
    assert q["judge/mae"] == pytest.approx(0.075)
    assert q["judge/parse_failure_rate"] == pytest.approx(1 / 3)
    assert q["judge/mean_v_hat"] == pytest.approx(0.15)


def test_constant_continuous_rewards_are_zero_variance():
    # eight rollouts that each passed 2 of 3 tests: float32 gives 3.6e-15 with a plain var()
    rewards = torch.full((1, 8), 2 / 3, dtype=torch.float32)
    assert rewards.var(dim=-1, unbiased=False).item() != 0.0  # the bug this guards against
    assert realised_variance(rewards).item() == 0.0
    assert torch.equal(group_advantages(rewards), torch.zeros_like(rewards))
    assert is_zero_variance(float(rewards.var(dim=-1, unbiased=False)))
    # a small real spread is kept
    spread = torch.tensor([[0.5] * 7 + [0.51]])
    assert realised_variance(spread).item() > 0.0
    assert not is_zero_variance(float(realised_variance(spread)))


def test_samplers_and_metrics_agree_on_which_groups_are_zero_variance():
    """One rule: a sampler's Outcome (DAPO's filter, GRESO's skip counts) counts a group as
    zero-variance exactly when the metrics and the advantages do."""
    from metis_core.samplers.base import Outcome

    groups = [
        [2 / 3] * 8,  # equal up to float rounding
        [0.5] * 7 + [0.51],  # a small real spread
        [0.5] * 63 + [0.5 + 2e-4],  # a spread whose variance is under the tolerance
        [0.0] * 4 + [1.0] * 4,
    ]
    for rewards in groups:
        variance = float(realised_variance(torch.tensor([rewards], dtype=torch.float64)))
        assert Outcome("p", rewards).zero_variance == is_zero_variance(variance) == (variance == 0)


def test_zero_variance_fraction_counts_constant_continuous_groups():
    from metis_core.stages.report import _outcome_metrics

    verified = [
        {"rewards": [2 / 3] * 8, "realised_variance": 3.6e-15},
        {"rewards": [0.0, 1.0] * 4, "realised_variance": 0.25},
    ]
    metrics = _outcome_metrics(verified, "train", "judge", judged=False)
    assert metrics["train/zero_variance_fraction"] == 0.5


def test_truncated_is_weights_by_hand():
    trainer = torch.tensor([[-1.0, -2.0, -0.5]])
    engine = torch.tensor([[-1.0, -1.0, -3.0]])
    # ratios 1, e^-1, e^2.5 -> capped at 2
    expected = torch.tensor([[1.0, math.exp(-1.0), 2.0]])
    assert torch.allclose(truncated_is_weights(trainer, engine, cap=2.0), expected)
    assert not truncated_is_weights(trainer.requires_grad_(), engine, 2.0).requires_grad


def test_policy_loss_with_is_weights_scales_each_token():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    weights = torch.tensor([[0.5, 2.0]])
    loss, _ = policy_token_loss(lp, lp.detach(), torch.tensor([1.0]), 0.2, weights)
    assert torch.allclose(loss, torch.tensor([[-0.5, -2.0]]))
    loss.sum().backward()
    assert torch.allclose(lp.grad, torch.tensor([[-0.5, -2.0]]))  # -A * w * d ratio


def test_policy_loss_survives_wild_log_ratios():
    lp = torch.tensor([[0.0]])
    loss, _ = policy_token_loss(lp, torch.tensor([[-500.0]]), torch.tensor([-1.0]), 0.2)
    assert torch.isfinite(loss).all()


def test_logprob_mismatch_by_hand():
    trainer = torch.tensor([[-1.0, -2.0, 0.0]])
    engine = torch.tensor([[-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    stats = logprob_mismatch(trainer, engine, mask)
    assert stats["gap_mean"] == pytest.approx(0.25)
    assert stats["gap_max"] == pytest.approx(0.5)
    assert stats["tokens"] == 2
    # k3 of log-ratio 0.5 and 0: (e^0.5 - 0.5 - 1 + 0) / 2
    assert stats["kl"] == pytest.approx((math.exp(0.5) - 1.5) / 2)


def test_judge_loss_with_is_weights():
    lp = torch.tensor([-2.0, -3.0])
    rewards = torch.tensor([1.0, 0.0])
    w = torch.tensor([2.0, 0.5])
    # -((1-0.5)*2*(-2) + (0-0.5)*0.5*(-3)) / 2
    assert judge_loss(lp, rewards, 0.5, w).item() == pytest.approx(-(-2.0 + 0.75) / 2)
