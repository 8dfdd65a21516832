"""bench/update_step.py runs: the tiny test model under DeepSpeed, two updates on new batches of
the default's shape (on the benchmark's own model, the embedded SmolLM2, this test took 77 s on
2 AVX-512 cores without bf16). How fast they are belongs in docs/BENCHMARKS.md."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_update_step_runs(tiny_model):
    # (after the in-process trainers of earlier tests: they must leave no port of theirs in the
    # environment this subprocess inherits, tests/integration/test_trainer_environment.py)
    done = subprocess.run(
        [sys.executable, "bench/update_step.py", "--steps", "2", "--vary", "--set", "precision=fp32",
         "--model", str(tiny_model)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    steps = re.findall(r"^step (\d): ([\d.]+) s .* ([\d.]+) TFLOP/s", done.stdout, re.MULTILINE)
    assert [s[0] for s in steps] == ["0", "1"]
    assert all(float(s[1]) > 0 and float(s[2]) > 0 for s in steps)
    assert "peak RSS" in done.stdout
