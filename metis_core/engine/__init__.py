"""The inference engine: vLLM in this process (vllm_engine.py) or in a worker process of its own
(remote.py), chosen by `model.engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from metis_core.ports import Engine


def open_engine(
    placement: Literal["in_process", "separate"],
    model_dir: str | Path,
    dtype: str,
    max_model_len: int,
    seed: int,
) -> Engine:
    """A started engine on the policy in `model_dir`, where `placement` (model.engine) says."""
    if placement == "separate":
        from metis_core.engine.remote import RemoteEngine

        return RemoteEngine(model_dir, dtype, max_model_len, seed)
    from metis_core.engine.vllm_engine import PolicyEngine

    return PolicyEngine(model_dir, dtype, max_model_len, seed)
