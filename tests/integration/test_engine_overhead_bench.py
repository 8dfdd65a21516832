"""bench/engine_overhead.py runs (tiny settings): a short training run on the tiny test model, then
its judge and rollout requests again on a bare vLLM engine, at the integration tier's batch sizes
(tests/conftest.py). It starts vLLM and a trainer, hence this tier; how close the stages come to
bare vLLM belongs in docs/BENCHMARKS.md."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, B, M, N

pytestmark = pytest.mark.integration


def test_engine_overhead_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/engine_overhead.py", "--tiny", "--steps", "1",
         "--output-dir", str(tmp_path), "--set", f"curriculum.batch_prompts={B}",
         "--set", f"curriculum.pool_multiplier={M}", "--set", f"rollout.n={N}"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r.split("|")[1].strip(): r.split("|")[2:-1] for r in done.stdout.splitlines()
            if r.startswith(("| judge", "| rollout"))}  # fmt: skip
    assert set(rows) == {"judge", "rollout"}
    for stage_s, bare_s, tokens, ratio in rows.values():
        assert float(stage_s) > 0 and float(bare_s) > 0 and int(tokens) > 0 and float(ratio) > 0
