"""Are two finished runs the same run? For refactors that must not change behaviour.

    python bench/same_runs.py runs/before runs/after

Both runs must have used the same config and seed (typically the same command at two commits,
each from its own git worktree). Compares what bench/kill_harness.py compares for a killed run:
outcome rows and judgments (identical), the final checkpoint's weights (within --tolerance) and
every MLflow metric at every step (equal to --metric-tolerance, relative or absolute; wall-clock
and memory metrics left out). Two processes need not round float32 sums alike (MKL is
reproducible within a process only), so losses and the engine/trainer gaps, which are float32
noise themselves (about 1e-5), can differ in their last digits while every sampled token and
reward is the same: compare runs of two commits at --metric-tolerance 1e-4.
Prints one JSON object; exits 1 when the runs differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kill_harness import compare, passed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reference", type=Path, help="a finished run's folder")
    parser.add_argument("other", type=Path, help="the run to compare with it")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="max |weight gap|")
    parser.add_argument(
        "--metric-tolerance", type=float, default=1e-6, help="max metric difference (rel or abs)"
    )
    args = parser.parse_args()
    result = compare(args.reference, args.other, args.metric_tolerance)
    result["same"] = passed(result, args.tolerance)
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["same"] else 1)


if __name__ == "__main__":
    main()
