"""Data-parallel DeepSpeed on CPU: two ranks launched by torchrun (gloo) against one rank on the
whole batch (bench/data_parallel_step.py, the tiny model, task and judge losses)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_ranks_take_the_one_rank_step(tiny_model, tmp_path):
    script = "bench/data_parallel_step.py"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    _run([torchrun, "--standalone", "--nproc_per_node", "2", script, "--model", str(tiny_model),
          "--out", str(tmp_path)])  # fmt: skip
    _run([sys.executable, script, "--model", str(tiny_model), "--out", str(tmp_path)])
    rank0, rank1, single = (
        torch.load(tmp_path / f"step-rank{r}-of-{w}.pt") for r, w in ((0, 2), (1, 2), (0, 1))
    )
    # the ranks hold identical weights after the step
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    # they applied the gradient of the whole batch: normalised by its tokens and rows, not each
    # rank's (Adam's first step is nearly sign(gradient), so the weights alone would not show it)
    norm, want = rank0["metrics"]["applied_grad_norm"], single["metrics"]["applied_grad_norm"]
    assert abs(norm - want) <= 1e-6 * want
    # every rank reports the whole batch's losses (its share's, summed over the ranks)
    for key in ("task_loss", "judge_loss"):
        want = single["metrics"][key]
        for rank in (rank0, rank1):
            assert rank["metrics"][key] == pytest.approx(want, rel=1e-6, abs=1e-9), key
    # and the weights match the one-rank step to float noise (lr 1e-3: a step moves them 1e-3)
    gap = max(
        (rank0["weights"][k] - single["weights"][k]).abs().max().item() for k in single["weights"]
    )
    assert gap < 1e-4
