"""The benchmarks run (tiny settings); how fast a machine is belongs in docs/BENCHMARKS.md."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_attention_paths_runs():
    done = subprocess.run(
        [sys.executable, "bench/attention_paths.py", "--repeat", "1", "--shapes", "4x3x9", "2x1x5"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    rows = [line.split("|") for line in lines if line.startswith(("| 4 x", "| 2 x"))]
    assert [r[-2].strip() for r in rows] == ["plain", "SDPA"]  # one query: SDPA
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)


def test_history_scale_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/history_scale.py", "--outcomes", "6400", "--judgments", "800",
         "--repeat", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps 0..99" in done.stdout
    timed = [line for line in done.stdout.splitlines() if line.startswith(("memory", "record"))]
    assert len(timed) == 4 and all(float(line.split()[-1]) > 0 for line in timed)


def test_tracking_scale_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/tracking_scale.py", "--steps", "40", "--metrics", "20",
         "--repeat", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps 0..39" in done.stdout
    timed = [
        line for line in done.stdout.splitlines() if line.startswith(("mlflow", "duckdb", "latest"))
    ]
    assert len(timed) == 4
    for line in timed:  # the step-10 and last-step seconds
        early, late = (float(x) for x in re.findall(r"\d+\.\d+", line)[:2])
        assert early > 0 and late > 0, line


def test_iteration_overhead_runs():
    done = subprocess.run(
        [sys.executable, "bench/iteration_overhead.py", "--work", "0.1", "--repeat", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [
        line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| 0.10")
    ]
    assert all(float(seconds) >= 0.1 for seconds in row[1:])  # each waited its work, at least


def test_iteration_breakdown_removes_the_run_it_started(tmp_path, monkeypatch):
    """The breakdown's own run (about 3 GB with its checkpoint) is removed after the report, and
    after a failed one; --keep and --output-dir keep it. `train` stands in for `metis train`:
    what is checked is the folder's life, not the training."""
    sys.path.insert(0, str(REPO))
    from bench import iteration_breakdown as bench

    monkeypatch.chdir(tmp_path)
    started: list[Path] = []

    def train(config, steps, output_dir, overrides):
        run = output_dir / "bench-run"
        run.mkdir(parents=True)
        (run / "run.json").write_text("{}")
        started.append(output_dir)
        return run

    def report(run_dir, total, peak):
        assert (run_dir / "run.json").is_file()  # still there while it is read
        if peak == 13:
            raise RuntimeError("the report failed")

    monkeypatch.setattr(bench, "train", train)
    monkeypatch.setattr(bench, "report", report)
    for argv, kept in (([], False), (["--keep"], True), (["--output-dir", "mine"], True)):
        monkeypatch.setattr(sys, "argv", ["iteration_breakdown.py", *argv])
        bench.main()
        assert started[-1].exists() is kept, argv
    assert started[0].parent == Path("runs")  # under the working folder
    assert started[2] == Path("mine")
    monkeypatch.setattr(sys, "argv", ["iteration_breakdown.py", "--peak", "13"])
    with pytest.raises(RuntimeError):
        bench.main()
    assert not started[-1].exists()
    monkeypatch.setattr(sys, "argv", ["iteration_breakdown.py", "--set", "output_dir=elsewhere"])
    with pytest.raises(SystemExit):  # the run would land where the report does not look
        bench.main()
    assert len(started) == 4
