"""The benchmarks run (tiny settings); how fast a machine is belongs in docs/BENCHMARKS.md."""

import subprocess
import sys

from tests.conftest import REPO


def test_roofline_runs():
    done = subprocess.run(
        [sys.executable, "bench/roofline.py", "--tokens", "32", "--seq", "16", "--repeat", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("total")]
    assert [r[2] for r in rows] == ["float32", "bfloat16"]
    assert all(float(r[-1]) > 0 for r in rows)
    assert "bf16 / fp32 matmul rate" in done.stdout
