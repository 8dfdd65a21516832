"""The engine/trainer gap on sampled tokens: measured every update, corrected by truncated
importance sampling (TIS), and refused above a limit (docs/metis.md, "What the update trains on").

The math is in metis_core.algorithms (`logprob_mismatch`, `truncated_is_weights`); this module
keeps the per-micro-batch bookkeeping and the decision to stop the run.
"""

from __future__ import annotations

import torch

from metis_core.algorithms import logprob_mismatch, truncated_is_weights
from metis_core.config import TrainerConfig


class EngineTrainerMismatch(RuntimeError):
    """The trainer's log-probs of the sampled tokens are too far from the inference engine's."""


def correct_tokens(
    logprobs: torch.Tensor,
    engine_lp: torch.Tensor | None,
    mask: torch.Tensor,
    cfg: TrainerConfig,
    mismatch: list[dict[str, float]],
) -> torch.Tensor | None:
    """Append this micro-batch's gap statistics to `mismatch`; return its [N, T] TIS weights
    when the correction is on (None without engine log-probs or with `rollout_correction: none`)."""
    if engine_lp is None:
        return None
    engine_lp = engine_lp.to(logprobs.device)
    stats = logprob_mismatch(logprobs, engine_lp, mask)
    mismatch.append(stats)
    if cfg.rollout_correction != "tis":
        return None
    weights = truncated_is_weights(logprobs, engine_lp, cfg.tis_cap)
    trained = weights[mask.bool()]
    if trained.numel():
        stats["tis_weight_mean"] = float(trained.mean())
        stats["tis_truncated"] = float((trained >= cfg.tis_cap).float().mean())
    return weights


def summarize_mismatch(
    parts: list[dict[str, float]], prefix: str, max_gap: float
) -> dict[str, float]:
    """Token-weighted gap metrics over micro-batches, as `<prefix>/...`; raises
    EngineTrainerMismatch when the mean gap exceeds `max_gap` (trainer.max_logprob_gap)."""
    tokens = sum(p["tokens"] for p in parts)
    if not tokens:
        return {}
    out = {
        f"{prefix}/logprob_gap_mean": sum(p["gap_mean"] * p["tokens"] for p in parts) / tokens,
        f"{prefix}/logprob_gap_max": max(p["gap_max"] for p in parts),
        f"{prefix}/kl": sum(p["kl"] * p["tokens"] for p in parts) / tokens,
    }
    for key in ("tis_weight_mean", "tis_truncated"):
        if all(key in p for p in parts):
            out[f"{prefix}/{key}"] = sum(p[key] * p["tokens"] for p in parts) / tokens
    gap = out[f"{prefix}/logprob_gap_mean"]
    if gap > max_gap:
        raise EngineTrainerMismatch(
            f"the trainer's log-probs of the sampled tokens differ from the inference engine's by "
            f"{gap:.4f} nats per token on average ({prefix}; largest "
            f"{out[f'{prefix}/logprob_gap_max']:.3f}), above trainer.max_logprob_gap = {max_gap}. "
            "The update was not applied. The engine does not sample what the trainer trains on: "
            "check that the engine holds the trainer's weights and samples with the temperature "
            "and constraints the trainer is given. bf16 arithmetic on either side adds to the gap "
            "(0.03-0.06 on the CPU default with a bf16 engine; model.dtype=float32 and "
            "trainer.precision=fp32 remove it). Raise the limit only if this gap is expected."
        )
    return out
