"""The trainer: one DeepSpeed `PolicyTrainer` in this process (policy_trainer.py), or a group of
data-parallel ranks that torchrun starts (group.py), chosen by `trainer.ranks`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from metis_core.config import TrainerConfig

if TYPE_CHECKING:
    from metis_core.trainer.group import TrainerGroup
    from metis_core.trainer.policy_trainer import PolicyTrainer


def open_trainer(
    model_dir: str | Path, cfg: TrainerConfig, max_response_tokens: int, engine_dtype: str
) -> PolicyTrainer | TrainerGroup:
    """A trainer holding the policy in `model_dir`, on as many ranks as cfg.ranks says."""
    if cfg.ranks > 1:
        from metis_core.trainer.group import TrainerGroup

        return TrainerGroup(model_dir, cfg, max_response_tokens, engine_dtype)
    from metis_core.trainer.policy_trainer import PolicyTrainer

    return PolicyTrainer(model_dir, cfg, max_response_tokens, engine_dtype)
