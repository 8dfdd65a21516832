"""Judge-audit metrics on hand-computed cases."""

import math

import numpy as np
import pytest

from metis_core.metrics import audit_metrics, grouped_audit_metrics
from metis_core.samplers.base import top_b


def test_audit_metrics_by_hand():
    # four prompts; the judge ranks prompt 2 first, then prompt 0
    scores = [0.20, 0.05, 0.25, 0.00]
    v_hat = [0.20, 0.05, 0.25, None]  # the last judgment did not parse (scored 0 by fallback)
    v = [0.25, 0.0, 0.1875, 0.0]
    m = audit_metrics(scores, v_hat, v, top=[2, 0])
    assert m["top_b_lift"] == pytest.approx(((0.1875 + 0.25) / 2) / ((0.25 + 0.1875) / 4))  # 2.0
    assert m["top_b_nonzero_share"] == 1.0
    assert m["nonzero_share"] == 0.5
    # parsed errors: -0.05, +0.05, +0.0625
    assert m["mae"] == pytest.approx((0.05 + 0.05 + 0.0625) / 3)
    assert m["bias"] == pytest.approx((-0.05 + 0.05 + 0.0625) / 3)
    assert m["parse_failure_rate"] == 0.25
    assert m["mean_v"] == pytest.approx(0.4375 / 4)
    assert m["mean_v_hat"] == pytest.approx(0.5 / 3)
    # ranks of scores 3,2,4,1 against v's 4,1.5,3,1.5
    assert m["spearman"] == pytest.approx(float(np.corrcoef([3, 2, 4, 1], [4, 1.5, 3, 1.5])[0, 1]))


def test_lift_is_nan_when_nothing_varies_and_a_constant_judge_has_no_rho():
    m = audit_metrics([0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.0, 0.0, 0.0], top=[0])
    assert math.isnan(m["top_b_lift"])
    assert math.isnan(m["spearman"])
    assert m["top_b_nonzero_share"] == m["nonzero_share"] == 0.0


def test_constant_continuous_rewards_do_not_count_as_nonzero_variance():
    m = audit_metrics([0.2, 0.1], [0.2, 0.1], [3.6e-15, 0.2], top=[0])
    assert m["top_b_nonzero_share"] == 0.0
    assert m["nonzero_share"] == 0.5


def test_grouped_audit_metrics_give_each_group_its_share_of_the_budget():
    scores = [0.25, 0.20, 0.0, 0.10, 0.05, 0.0]
    v = [0.25, 0.0, 0.0, 0.25, 0.0, 0.0]
    groups = ["math", "math", "math", "code", "code", "code"]
    rng = np.random.default_rng(0)
    chosen = {}

    def top(s, k):
        picks = top_b(s, k, rng)
        chosen[tuple(s)] = picks
        return picks

    out = grouped_audit_metrics(scores, scores, v, budget=2, groups=groups, top=top)
    assert set(out) == {"code", "math"}
    assert len(chosen[(0.25, 0.20, 0.0)]) == 1  # each half of the set gets one pick
    assert len(chosen[(0.10, 0.05, 0.0)]) == 1
    assert out["math"]["top_b_lift"] == pytest.approx(0.25 / (0.25 / 3))
    assert out["code"]["top_b_lift"] == pytest.approx(0.25 / (0.25 / 3))
