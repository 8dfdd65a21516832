"""The curriculum's settings: which sampler picks the prompts, the budget, and each sampler's own
knobs. Part of `RunConfig` (metis_core/config.py) as its `curriculum` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metis_core.config_section import Section as _Section

SamplerName = Literal["metis", "uniform", "dapo_dynamic", "greso", "mopps", "pcl"]


class DapoConfig(_Section):
    max_rounds: int = Field(4, ge=1)
    """Rollout rounds per iteration: each round rolls out as many of the (shuffled) candidates as
    the batch still lacks, and keeps the groups whose rewards vary. At most m rounds are possible
    (the candidate pool runs out); a batch still short after them is trained as it is."""


class GresoConfig(_Section):
    initial_explore: float = Field(0.5, gt=0, le=1)
    """Starting exploration probability p_e: a prompt whose last z appearances all had zero
    variance is rolled out with probability p_e ** z, and skipped otherwise."""
    explore_step: float = Field(0.05, gt=0, le=1)
    """How far p_e moves per iteration toward the target zero-variance share."""
    min_explore: float = Field(0.05, gt=0, le=1)
    """p_e never goes below this, so a skipped prompt is always seen again eventually."""
    target_easy: float = Field(0.125, ge=0, le=1)
    """Target share of trained groups that are all-correct; above it p_e(easy) falls, below it rises."""
    target_hard: float = Field(0.125, ge=0, le=1)
    """Target share of trained groups that are all-wrong; p_e(hard) adapts toward it."""


class MoppsConfig(_Section):
    prior_alpha: float = Field(1.0, gt=0)
    """alpha_0 of each prompt's Beta prior on its success rate."""
    prior_beta: float = Field(1.0, gt=0)
    """beta_0 of the prior."""
    decay: float = Field(0.5, ge=0, le=1)
    """lambda: before adding a new observation, the posterior decays toward the prior,
    alpha <- lambda * alpha + (1 - lambda) * alpha_0 (the policy moves; old outcomes age)."""
    target: float = Field(0.5, gt=0, lt=1)
    """The success rate MoPPS aims for: the B candidates whose Thompson samples lie nearest it win."""


class PclConfig(_Section):
    target: float = Field(0.5, gt=0, lt=1)
    """The predicted success rate PCL aims for: candidates predicted nearest it win."""
    ridge: float = Field(1.0, gt=0)
    """L2 penalty of the value head (ridge regression on the policy's frozen prompt features)."""
    buffer: int = Field(512, gt=0)
    """The value head is refit after every iteration on this many most recent (prompt, success
    rate) observations."""


class CurriculumConfig(_Section):
    sampler: SamplerName = "metis"
    """Which curriculum picks the prompts: `metis` (the policy's own v_hat), `uniform` (plain GRPO),
    `dapo_dynamic` (DAPO's dynamic sampling), `greso` (skip prompts that were zero-variance),
    `mopps` (Beta posterior of success, Thompson sampled), `pcl` (a value head on the policy's
    prompt features); docs/metis.md compares them."""
    batch_prompts: int = Field(8, gt=0)
    """B: prompts that get rollouts each iteration."""
    pool_multiplier: int = Field(4, ge=1)
    """m: the candidate pool C_t holds m * B prompts drawn from the training split."""
    exploration: float = Field(0.125, ge=0, le=1)
    """The selection floor epsilon of every sampler that scores prompts (metis, greso, mopps, pcl):
    floor(epsilon * B) of the batch is drawn uniformly from the candidates outside the top, so no
    task or domain is shut out for good by a score that is wrong about it."""
    warmup_steps: int = Field(1, ge=0)
    """Iterations that allocate uniformly while the history is too short to calibrate the judge
    (judgments are still made, scored and trained)."""
    dapo: DapoConfig = DapoConfig()
    """`dapo_dynamic`: over-sample and drop zero-variance groups."""
    greso: GresoConfig = GresoConfig()
    """`greso`: probabilistic pre-rollout skipping of zero-variance prompts."""
    mopps: MoppsConfig = MoppsConfig()
    """`mopps`: model-predictive prompt selection."""
    pcl: PclConfig = PclConfig()
    """`pcl`: prompt curriculum learning with a value model."""
