"""The curriculum samplers GRESO, MoPPS and PCL on a simulated learner, their state and edge cases."""

import json
from typing import get_args

import numpy as np
import pytest

from metis_core.curriculum_config import CurriculumConfig, SamplerName
from metis_core.samplers import SAMPLERS, Candidate, Outcome, Sampler, make_sampler
from metis_core.samplers.dapo import refill

LEARNING = ["greso", "mopps", "pcl"]
PROMPTS, DIM, POOL, BUDGET, ROLLOUTS = 64, 8, 32, 8, 8


class Learner:
    """Prompts with latent success rates sigmoid(logit), logits spread wide so many prompts are
    (almost) always or never solved; training a prompt nudges its logit up. Feature 0 carries the
    logit (plus noise), the rest is noise."""

    def __init__(self, seed: int, prompts: int = PROMPTS, spread: float = 4.0) -> None:
        rng = np.random.default_rng([seed, 1_000_000])
        self.logits = rng.normal(0.0, spread, prompts)
        self.noise = rng.normal(0.0, 1.0, (prompts, DIM))

    def rate(self, i: int) -> float:
        return float(1.0 / (1.0 + np.exp(-self.logits[i])))

    def features(self, i: int) -> np.ndarray:
        f = self.noise[i].copy()
        f[0] = self.logits[i] + 0.3 * self.noise[i, 0]
        return f

    def candidates(self, rng: np.random.Generator) -> tuple[np.ndarray, list[Candidate]]:
        ids = rng.choice(len(self.logits), POOL, replace=False)
        return ids, [Candidate(prompt_id=f"p{i}", features=self.features(i)) for i in ids]

    def rollout(self, i: int, rng: np.random.Generator) -> Outcome:
        rewards = (rng.random(ROLLOUTS) < self.rate(i)).astype(float).tolist()
        self.logits[i] += 0.2
        return Outcome(prompt_id=f"p{i}", rewards=rewards, features=self.features(i))


def train(sampler: Sampler, seed: int, steps: int, learner: Learner | None = None) -> dict:
    """Run the sampler on a learner; what it selected: non-zero-variance flags, |rate - 0.5|."""
    learner = learner or Learner(seed)
    varied, gaps = [], []
    for step in range(steps):
        env = np.random.default_rng([seed, step, 1])
        ids, candidates = learner.candidates(env)
        chosen = sampler.select(candidates, BUDGET, np.random.default_rng([seed, step]))
        assert len(set(chosen)) == BUDGET
        outcomes = []
        for j in chosen:
            gaps.append(abs(learner.rate(ids[j]) - 0.5))
            outcomes.append(learner.rollout(ids[j], env))
            varied.append(not outcomes[-1].zero_variance)
        sampler.update(outcomes)
    return {"varied": float(np.mean(varied)), "gap": float(np.mean(gaps))}


def new(name: str, **kw) -> Sampler:
    return make_sampler(CurriculumConfig(sampler=name, **kw))


def test_registry_matches_the_config_literal():
    assert set(SAMPLERS) == set(get_args(SamplerName))


# ----------------------------------------------------------------------------- selection


@pytest.mark.parametrize(
    ("name", "more_varied", "nearer_half"),
    [("greso", 0.05, None), ("mopps", 0.08, 0.02), ("pcl", 0.15, 0.05)],
)
def test_selects_more_informative_groups_than_uniform(name, more_varied, nearer_half):
    """Over 4 seeds x 30 steps (960 groups) the sampler's groups vary more often than uniform's
    (on the same learners and seeds; margins about half the smallest seen over 40 seeds)."""
    seeds = range(4)
    ours = [train(new(name), s, 30) for s in seeds]
    base = [train(new("uniform"), s, 30) for s in seeds]
    assert np.mean([r["varied"] for r in ours]) > np.mean([r["varied"] for r in base]) + more_varied
    if nearer_half is not None:
        assert np.mean([r["gap"] for r in ours]) < np.mean([r["gap"] for r in base]) - nearer_half


# ----------------------------------------------------------------------------- state, metrics


@pytest.mark.parametrize("name", LEARNING)
def test_state_round_trips_through_json(name):
    sampler = new(name)
    learner = Learner(7)
    train(sampler, 7, 12, learner)
    state = sampler.state_dict()
    again = new(name)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.state_dict() == state
    _, candidates = learner.candidates(np.random.default_rng(99))
    scores = sampler.score(candidates, np.random.default_rng(5))
    assert again.score(candidates, np.random.default_rng(5)) == scores
    assert len(set(scores)) > 1  # the state matters to the scores: the comparison can fail


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("greso", {"p_explore_easy", "p_explore_hard", "skipped", "tracked_prompts"}),
        ("mopps", {"tracked_prompts", "posterior_mean", "mean_abs_gap_to_target"}),
        ("pcl", {"prediction_error", "buffer_size", "fits"}),
    ],
)
def test_metrics_after_an_update(name, keys):
    sampler = new(name)
    train(sampler, 3, 3)
    metrics = sampler.metrics()
    assert set(metrics) == keys
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert metrics["tracked_prompts" if name != "pcl" else "buffer_size"] > 0


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", LEARNING)
def test_first_step_with_no_history(name):
    _, candidates = Learner(0).candidates(np.random.default_rng(0))
    chosen = new(name).select(candidates, BUDGET, np.random.default_rng(1))
    assert len(set(chosen)) == BUDGET and all(0 <= i < POOL for i in chosen)


@pytest.mark.parametrize("name", LEARNING)
def test_every_candidate_zero_variance(name):
    sampler = new(name)
    _, candidates = Learner(0).candidates(np.random.default_rng(0))
    for _ in range(3):
        sampler.update(
            [
                Outcome(c.prompt_id, [float(k % 2)] * ROLLOUTS, features=c.features)
                for k, c in enumerate(candidates)
            ]
        )
    chosen = sampler.select(candidates, BUDGET, np.random.default_rng(1))
    assert len(set(chosen)) == BUDGET
    assert all(np.isfinite(v) for v in sampler.metrics().values())
    if name == "greso":  # p_e ** 3 <= 0.35 ** 3: most are skipped, and the batch is still full
        assert sampler.metrics()["skipped"] > POOL / 2


@pytest.mark.parametrize("name", LEARNING)
def test_pool_smaller_than_budget_is_an_error(name):
    _, candidates = Learner(0).candidates(np.random.default_rng(0))
    with pytest.raises(ValueError, match="cannot select 8 prompts from 5 candidates"):
        new(name).select(candidates[:5], BUDGET, np.random.default_rng(1))


# ----------------------------------------------------------------------------- greso


def test_greso_streaks_and_continuous_rewards():
    sampler = new("greso")
    sampler.update([Outcome("a", [2 / 3] * 8), Outcome("b", [0.0] * 8), Outcome("c", [0, 1] * 4)])
    sampler.update([Outcome("a", [2 / 3] * 8), Outcome("c", [1.0] * 8)])
    streaks = sampler.state_dict()["streaks"]
    assert streaks["a"] == {"z": 2, "easy": True}  # eight times 2/3 is zero-variance, easy
    assert streaks["b"] == {"z": 1, "easy": False}
    assert streaks["c"] == {"z": 1, "easy": True}
    sampler.update([Outcome("a", [0.0, 0.5] * 4)])
    assert sampler.state_dict()["streaks"]["a"]["z"] == 0  # a varied group ends the streak


def test_greso_explore_probability_adapts_to_the_targets():
    sampler = new("greso")  # p_e = 0.5, step 0.05, targets 0.125, floor 0.05
    all_easy = [Outcome(f"e{i}", [1.0] * 8) for i in range(8)]
    sampler.update(all_easy)
    assert sampler.metrics()["p_explore_easy"] == pytest.approx(0.45)
    assert sampler.metrics()["p_explore_hard"] == pytest.approx(0.55)
    for _ in range(20):
        sampler.update(all_easy)
    assert sampler.metrics()["p_explore_easy"] == pytest.approx(0.05)
    assert sampler.metrics()["p_explore_hard"] == pytest.approx(1.0)


def test_greso_keeps_a_zero_variance_prompt_with_probability_p_to_the_z():
    sampler = new("greso")
    sampler.load_state_dict(
        {"p_explore": {"easy": 0.5, "hard": 0.9}, "streaks": {"a": {"z": 2, "easy": True}}}
    )
    candidates = [Candidate("a"), Candidate("fresh")]
    kept = [sampler.score(candidates, np.random.default_rng(s)) for s in range(2000)]
    assert all(k[1] == 1.0 for k in kept)
    assert np.mean([k[0] for k in kept]) == pytest.approx(0.25, abs=0.03)


# ----------------------------------------------------------------------------- mopps


def test_mopps_posterior_decays_toward_the_prior_and_takes_fractional_successes():
    sampler = new("mopps")  # prior (1, 1), decay 0.5
    sampler.update([Outcome("a", [2 / 3] * 8)])
    a, b = sampler.state_dict()["posterior"]["a"]
    assert (a, b) == pytest.approx((1 + 16 / 3, 1 + 8 / 3))
    sampler.update([Outcome("a", [1.0] * 8)])
    a2, b2 = sampler.state_dict()["posterior"]["a"]
    assert (a2, b2) == pytest.approx((0.5 * a + 0.5 + 8, 0.5 * b + 0.5))
    assert sampler.metrics()["mean_abs_gap_to_target"] == pytest.approx(abs(a / (a + b) - 0.5))


def test_mopps_prefers_prompts_whose_posterior_is_near_the_target():
    sampler = new("mopps")
    for _ in range(3):
        sampler.update([Outcome("easy", [1.0] * 8), Outcome("mid", [0, 1] * 4)])
    wins = [
        sampler.score([Candidate("easy"), Candidate("mid")], np.random.default_rng(s))
        for s in range(200)
    ]
    assert np.mean([m > e for e, m in wins]) > 0.95


# ----------------------------------------------------------------------------- pcl


def test_pcl_needs_features():
    sampler = new("pcl")
    with pytest.raises(ValueError, match="needs prompt features"):
        sampler.score([Candidate("a")], np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs prompt features"):
        sampler.update([Outcome("a", [1.0] * 8)])
    sampler.update([Outcome("a", [1.0] * 8, features=np.ones(DIM))])
    with pytest.raises(ValueError, match="shape"):
        sampler.score([Candidate("b", features=np.ones(DIM + 1))], np.random.default_rng(0))


def test_pcl_ties_before_its_first_fit_then_learns_the_success_rate():
    sampler = new("pcl")
    learner = Learner(11)
    _, candidates = learner.candidates(np.random.default_rng(0))
    assert len(set(sampler.score(candidates, np.random.default_rng(0)))) == 1
    train(sampler, 11, 20, learner)
    metrics = sampler.metrics()
    assert metrics["fits"] == 20 and metrics["buffer_size"] == 160
    assert metrics["prediction_error"] < 0.3
    pred = sampler.predict(candidates)
    rates = [learner.rate(int(c.prompt_id[1:])) for c in candidates]
    assert np.corrcoef(pred, rates)[0, 1] > 0.8


def test_pcl_buffer_is_a_fifo_of_the_last_observations():
    sampler = make_sampler(CurriculumConfig(sampler="pcl", pcl={"buffer": 5}))
    for k in range(4):
        sampler.update(
            [Outcome(f"p{k}-{j}", [k / 4] * 8, features=np.full(DIM, k)) for j in range(2)]
        )
    state = sampler.state_dict()
    assert len(state["buffer_y"]) == 5
    assert state["buffer_y"] == [0.25, 0.5, 0.5, 0.75, 0.75]


def test_pcl_ridge_fit_has_an_intercept_and_clips_its_predictions():
    sampler = make_sampler(CurriculumConfig(sampler="pcl", pcl={"ridge": 1e-6}))
    x0 = np.linspace(5.0, 15.0, 11)  # far from zero: a fit without intercept would miss
    sampler.update(
        [
            Outcome(f"p{k}", [0.05 * v - 0.2] * 8, features=np.r_[v, np.zeros(DIM - 1)])
            for k, v in enumerate(x0)
        ]
    )
    probe = [Candidate(f"q{v}", features=np.r_[v, np.zeros(DIM - 1)]) for v in (8.0, 12.0, 40.0)]
    assert sampler.predict(probe) == pytest.approx([0.2, 0.4, 1.0], abs=1e-4)
    # 40 -> 1.8 unclipped; clipped to 1.0 it is as far from 0.5 as a prediction of 0.0
    assert sampler.score(probe, np.random.default_rng(0))[2] == pytest.approx(-0.5)


# ---- dapo_dynamic: the refill loop (pure; the rollout stage gives it the engine) ----------------


def _roller(rewards_of):
    """A `roll` that returns each prompt's fixed rewards and records the rounds it was asked for."""
    asked = []

    def roll(prompt_ids):
        asked.append(list(prompt_ids))
        return [{"prompt_id": p, "rewards": list(rewards_of[p])} for p in prompt_ids]

    return roll, asked


def test_refill_tops_up_only_what_the_batch_lacks_and_keeps_every_accepted_group():
    rewards = {"a": [1, 0], "b": [1, 1], "c": [0, 0], "d": [0, 1], "e": [1, 0], "f": [0, 1]}
    roll, asked = _roller(rewards)
    done = refill(list("abcdef"), 3, max_rounds=4, roll=roll)
    assert asked == [["a", "b", "c"], ["d", "e"]]  # round 2 asks for the 2 still missing
    assert [g["prompt_id"] for g in done.batch] == ["a", "d", "e"]
    assert [g["prompt_id"] for g in done.dropped] == ["b", "c"]
    assert done.rounds == 2


def test_refill_that_cannot_fill_trains_on_what_it_has():
    rewards = {"a": [1, 0], "b": [1, 1], "c": [0, 0], "d": [0, 0]}
    roll, asked = _roller(rewards)
    done = refill(list("abcd"), 3, max_rounds=2, roll=roll)
    assert [g["prompt_id"] for g in done.batch] == ["a"]
    assert done.rounds == 2 and asked == [["a", "b", "c"], ["d"]]
    assert {g["prompt_id"] for g in done.dropped} == {"b", "c", "d"}


def test_refill_with_no_varying_group_trains_the_last_round_and_drops_the_rest():
    """Continuous rewards that are constant (eight times 2/3) count as zero variance too."""
    rewards = {p: [2 / 3] * 8 for p in "abcd"}
    roll, _ = _roller(rewards)
    done = refill(list("abcd"), 2, max_rounds=5, roll=roll)
    assert done.accepted == [] and done.rounds == 2
    assert [g["prompt_id"] for g in done.batch] == ["c", "d"]  # last round, zero advantages
    assert [g["prompt_id"] for g in done.dropped] == ["a", "b"]


def test_dapo_sampler_orders_every_candidate_and_reports_its_rounds():
    sampler = make_sampler(CurriculumConfig(sampler="dapo_dynamic"))
    candidates = [Candidate(str(i)) for i in range(6)]
    order = sampler.select(candidates, 2, np.random.default_rng(0))
    assert sorted(order) == list(range(6))
    assert order == sampler.select(candidates, 2, np.random.default_rng(0))  # replay draws the same
    assert sampler.refills and not sampler.scores_prompts
    sampler.record_rounds(rounds=3, accepted=1, discarded=5, budget=2)
    assert sampler.metrics() == {
        "rounds": 3.0,
        "accepted_groups": 1.0,
        "discarded_groups": 5.0,
        "batch_filled": 0.0,
    }
