from collections import Counter

import numpy as np
import pytest

from metis_core.curriculum_config import CurriculumConfig
from metis_core.samplers import (
    SAMPLERS,
    Candidate,
    Sampler,
    make_sampler,
    register_sampler,
    top_b,
)


def test_top_b_picks_highest():
    rng = np.random.default_rng(0)
    assert sorted(top_b([0.1, 0.25, 0.0, 0.2], 2, rng)) == [1, 3]


def test_top_b_breaks_ties_at_random():
    picks = Counter()
    for seed in range(200):
        (i,) = top_b([0.2, 0.2, 0.2, 0.1], 1, np.random.default_rng(seed))
        picks[i] += 1
    assert set(picks) == {0, 1, 2}  # never the lower score, each tied one sometimes
    assert min(picks.values()) > 30


def test_top_b_exploration_takes_some_from_below_the_top():
    scores = [1.0, 0.9, 0.8, 0.7, 0.0, 0.0, 0.0, 0.0]
    chosen = top_b(scores, 4, np.random.default_rng(1), exploration=0.5)
    assert len(set(chosen)) == 4
    assert set(chosen[:2]) == {0, 1}
    assert all(i >= 2 for i in chosen[2:])


def test_top_b_budget_larger_than_pool_is_an_error():
    with pytest.raises(ValueError, match="cannot select 5"):
        top_b([0.1, 0.2], 5, np.random.default_rng(0))


def test_registry_rejects_duplicate_names_and_unknown_samplers():
    assert {"metis", "uniform"} <= set(SAMPLERS)

    class Again(Sampler):
        name = "metis"

    with pytest.raises(ValueError, match="already registered"):
        register_sampler(Again)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler(CurriculumConfig.model_construct(sampler="nope"))


def test_metis_scores_are_the_judgments():
    s = make_sampler(CurriculumConfig(sampler="metis"))
    rng = np.random.default_rng(0)
    assert s.needs_judgment
    assert s.score([Candidate("a", v_hat=0.1), Candidate("b", v_hat=0.2)], rng) == [0.1, 0.2]
    with pytest.raises(ValueError, match="one judgment per candidate"):
        s.score([Candidate("a"), Candidate("b", v_hat=0.2)], rng)


def test_selection_floor_applies_to_scoring_samplers_only():
    """metis keeps floor(0.25 * 4) = 1 slot for a uniform draw below its top; uniform and DAPO
    have no ranking for a floor to correct."""
    cfg = CurriculumConfig(exploration=0.25)
    candidates = [Candidate(str(i), v_hat=1.0 - i / 10) for i in range(8)]
    below_top = Counter()
    for seed in range(50):
        chosen = make_sampler(cfg).select(candidates, 4, np.random.default_rng(seed))
        assert chosen[:3] == [0, 1, 2]
        below_top[chosen[3]] += 1
    assert set(below_top) <= set(range(3, 8)) and len(below_top) >= 4
    assert not make_sampler(cfg.model_copy(update={"sampler": "uniform"})).scores_prompts
    dapo = make_sampler(cfg.model_copy(update={"sampler": "dapo_dynamic"}))
    assert sorted(dapo.select(candidates, 4, np.random.default_rng(0))) == list(range(8))
