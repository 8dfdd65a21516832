"""The trainer's torch.distributed start compiles nothing: DeepSpeed's shared-memory all-reduce,
which only its tensor-parallel inference layers use, is left unbuilt. A run killed while that op
compiled would leave torch's build lock behind, and a start that built it would wait on that lock
forever; here a left-behind lock is in place and the start must not notice it. A node given
more ranks than GPUs is refused before the start, with the fix in the message."""

import os
import subprocess
import sys
import textwrap

import pytest

START = textwrap.dedent(
    """
    import os
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    from metis_core.trainer.distributed import (
        init_single_process_distributed, single_process_environment)
    with single_process_environment():
        init_single_process_distributed()
    print("world", torch.distributed.get_world_size())
    """
)


def test_the_trainer_starts_past_a_build_lock_a_killed_run_left(tmp_path):
    extensions = tmp_path / "torch_extensions"
    op_dir = extensions / "deepspeed_shm_comm"
    op_dir.mkdir(parents=True)
    (op_dir / "lock").touch()  # what torch's FileBaton leaves when its holder is killed
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world 1" in done.stdout
    assert sorted(p.name for p in op_dir.iterdir()) == ["lock"]  # nothing was compiled


def test_a_node_with_more_ranks_than_gpus_is_refused_with_the_fix():
    from metis_core.trainer.rank_worker import check_one_gpu_each

    with pytest.raises(
        SystemExit, match=r"2 trainer ranks but has 1 GPU.*trainer.ranks to at most 1"
    ):
        check_one_gpu_each(local_rank=1, local_ranks=2, gpus=1)
    check_one_gpu_each(local_rank=0, local_ranks=2, gpus=1)  # the first rank has its GPU
    check_one_gpu_each(local_rank=1, local_ranks=2, gpus=2)
    check_one_gpu_each(local_rank=3, local_ranks=4, gpus=0)  # CPU ranks: any number
