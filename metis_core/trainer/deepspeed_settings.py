"""The DeepSpeed config metis generates from the trainer's settings (TrainerConfig), with the
user's optional JSON file (trainer.deepspeed_config) merged over it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metis_core.config import TrainerConfig


def deepspeed_config(cfg: TrainerConfig) -> dict[str, Any]:
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        # Our loop owns the boundary: backward per micro-batch, one step() per epoch.
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        # "bf16": DeepSpeed keeps bf16 weights with fp32 master copies; "autocast-bf16": fp32 weights,
        # bf16 matmuls under torch.autocast (fast on CPUs with AMX), handled in PolicyTrainer.
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed_config:
        ds.update(json.loads(Path(cfg.deepspeed_config).read_text()))
    return ds
