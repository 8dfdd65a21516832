import math

import pytest
import torch

from metis_core.algorithms import (
    MovingAverageBaseline,
    agg_loss,
    group_advantages,
    judge_loss,
    judge_reward,
    kl_k3,
    pass_at_k,
    policy_token_loss,
    realised_variance,
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
