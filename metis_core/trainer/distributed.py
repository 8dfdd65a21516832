"""The trainer's processes: one rank on this machine by default, or N data-parallel ranks that a
launcher (torchrun, DeepSpeed's) started, whose environment (RANK, WORLD_SIZE, MASTER_ADDR) is
kept."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WORLD_OF_ONE = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}


@contextmanager
def single_process_environment() -> Iterator[None]:
    """Inside: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (a free port) for a
    world of one, each one a launcher did not set; torch.distributed and DeepSpeed read them while
    they start. Removed on exit, so that a process this one starts later (a `metis` command run
    from a notebook that trained) does not inherit a port this process still holds."""
    added = {key: value for key, value in _WORLD_OF_ONE.items() if key not in os.environ}
    if "MASTER_PORT" not in os.environ:
        added["MASTER_PORT"] = str(_free_port())
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def init_single_process_distributed() -> None:
    """torch.distributed for the trainer (gloo on CPU, nccl on GPU): world size 1 on this
    machine, unless a launcher set RANK, WORLD_SIZE and MASTER_ADDR/PORT. Call it inside
    `single_process_environment`."""
    if not torch.distributed.is_initialized():
        init_deepspeed_distributed()
    _forget_destroyed_groups()


def init_deepspeed_distributed(**options: Any) -> None:
    """`deepspeed.init_distributed` (gloo on CPU, nccl on GPU) without its shared-memory all-reduce.

    DeepSpeed's CPU backend JIT-compiles that op (`deepspeed_shm_comm`, ninja and g++: 35 s on 2
    cores) the first time a process on a machine starts, for its tensor-parallel inference layers
    alone: training's collectives go through torch.distributed. metis never uses those layers, so
    the op is marked unusable first, in the table DeepSpeed keeps for that. That saves the compile
    on a fresh machine, and it removes a hang: a run killed mid-compile leaves torch's build lock
    file behind, and every later start, the resume included, would wait for it forever."""
    import deepspeed
    import deepspeed.ops

    if torch.cuda.is_available():  # the op is the CPU backend's: nothing to turn off
        deepspeed.init_distributed(dist_backend="nccl", **options)
        return
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # (probing it: 0.05 s)
    deepspeed.init_distributed(dist_backend="gloo", **options)


def across_ranks(values: list[float]) -> tuple[list[float], int]:
    """Sums of `values` over the data-parallel ranks, and how many ranks there are (1 and the
    values themselves in a single process)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return values, 1
    summed = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(summed)
    return summed.tolist(), torch.distributed.get_world_size()


def gathered(items: list[Any]) -> list[Any]:
    """Every rank's `items`, one list after another in rank order (`items` itself in a single
    process): for a statistic that must be the whole batch's on every rank."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return items
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def _forget_destroyed_groups() -> None:
    """vLLM's in-process engine destroys torch.distributed's process groups when it shuts down,
    behind DeepSpeed's back, and DeepSpeed keeps its clone of the world group. A trainer made after
    an engine restart then fails in `deepspeed.initialize` ("Group ... is not registered"): drop
    DeepSpeed's references to groups that no longer exist, so it builds fresh ones."""
    from deepspeed.utils import groups

    world = getattr(groups, "_WORLD_GROUP", None)
    if world is None:
        return
    try:
        torch.distributed.get_global_rank(world, 0)
    except ValueError:  # the group was destroyed
        groups._release_process_group_references()
