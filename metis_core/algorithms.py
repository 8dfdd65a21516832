"""The math of a METIS update: pure functions on tensors.

Task loss: GRPO without per-group std normalisation (Dr. GRPO): A_i = r_i - mean(r_group), a
PPO-style clipped ratio (a no-op on the first pass over a batch, active when a batch is reused),
token losses aggregated by `agg_loss` (token-mean by default), an optional k3 KL to a reference.

Self-judgment: R_judge = 1 - (4 (v_hat - v))^2 in [0, 1], 0 for an unparsable judgment, trained by
REINFORCE on the judgment tokens against a moving-average baseline b_t.

Total: L = L_task + lambda * L_judge.
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


def realised_variance(rewards: torch.Tensor) -> torch.Tensor:
    """Population variance of each group's rewards: [G, n] -> [G], in [0, 0.25] for r in [0, 1]."""
    return rewards.var(dim=-1, unbiased=False)


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage, r_i - mean(r_group), no std division: [G, n] -> [G, n]."""
    return rewards - rewards.mean(dim=-1, keepdim=True)


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


def policy_token_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token. logprobs, old_logprobs: [N, T]; advantages: [N].

    Returns (token_loss [N, T], clipped [N, T] bool: where the clip was active).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(-1)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - lp) - (ref - lp) - 1 >= 0."""
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1.0


def judge_reward(v_hat: torch.Tensor, v: torch.Tensor, parsed: torch.Tensor) -> torch.Tensor:
    """R_judge = 1 - (4 (v_hat - v))^2, and 0 where the judgment did not parse. All [S]."""
    reward = 1.0 - (4.0 * (v_hat - v)) ** 2
    return torch.where(parsed, reward.clamp(0.0, 1.0), torch.zeros_like(reward))


def judge_loss(
    judgment_logprob_sums: torch.Tensor, rewards: torch.Tensor, baseline: float
) -> torch.Tensor:
    """REINFORCE on the judgment tokens: -(1/|S|) sum (R - b) log pi(judgment | judgment prompt).

    judgment_logprob_sums: [S], the summed log-probs of each emitted judgment under the policy.
    """
    return -((rewards - baseline) * judgment_logprob_sums).mean()


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
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail
