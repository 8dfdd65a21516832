"""Where the judge's ranking is lost: in the calibration memory, or in the judge reading it.

    .venv/bin/python bench/judge_memory_signal.py --from-step 4 runs/metis-default-*

For every audit of each run (steps/<step>/audit.json: random training prompts, the sampler's
score of each, and the variance its rollouts realised), rebuild the retrieved calibration memory
the judge would see for each audited prompt (metis_core/memory.py, from the run's DuckDB history
before the next step) and report, as Spearman rho over the audit set:

- memory -> v: the mean variance of the K retrieved examples against the realised variance, i.e.
  how much the history says about each prompt (a nearest-neighbour predictor, no judge involved);
- score -> v: the sampler's own score against the realised variance (what `audit/spearman` logs);
- score ~ memory: how closely the judge's score follows the retrieved examples;
- v split-half: the variance of the even-numbered rollouts against that of the odd-numbered ones,
  a test-retest reliability of the realised variance itself (at n/2 rollouts each): no score can
  rank much better than the target's own noise allows.

Runs made with the recent memory are measured with the retrieved memory all the same (what
retrieval would have shown the judge on that history). Prints a markdown table, one row per run
and audit step, then the mean and standard deviation per step over the runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pandas as pd

from metis_core.memory import PastOutcome, retrieve
from metis_core.metrics import spearman
from metis_core.store.outcomes import OutcomeStore


def audit_signal(
    run_dir: Path, first_step: int, k: int | None = None, window: int | None = None
) -> list[dict[str, float]]:
    """One row per audit from `first_step` on; `k` and `window` (trained prompts searched)
    default to the run's own judge.k_examples and judge.retrieval_window."""
    config = json.loads((run_dir / "config.json").read_text())
    k = k if k is not None else config["judge"]["k_examples"]
    window = window if window is not None else config["judge"].get("retrieval_window", 1024)
    rows = {r["prompt_id"]: r for r in pd.read_parquet(run_dir / "pool.parquet").to_dict("records")}
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    store = OutcomeStore(run_dir / "history.duckdb")
    out = []
    for audit_file in sorted(run_dir.glob("steps/*/audit.json")):
        name = audit_file.parent.name
        if not name.isdigit() or int(name) < first_step:
            continue
        step = int(name)
        audited = json.loads(audit_file.read_text())["prompts"]
        past = [PastOutcome(*o) for o in store.past_outcomes(run_id, step + 1, window)]
        memory = [
            statistics.fmean([e.variance for e in m] or [0.0])
            for m in (retrieve(rows[a["prompt_id"]], past, k) for a in audited)
        ]
        v = [a["realised_variance"] for a in audited]
        halves = [[statistics.pvariance(a["rewards"][h::2]) for a in audited] for h in (0, 1)]
        score = [a["score"] for a in audited]
        out.append(
            {
                "step": step,
                "memory -> v": spearman(memory, v),
                "score -> v": spearman(score, v),
                "score ~ memory": spearman(score, memory),
                "v split-half": spearman(*halves),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with run.json)")
    parser.add_argument("--from-step", type=int, default=0, help="audits from this step on")
    parser.add_argument("--k", type=int, help="examples retrieved (default: the run's K)")
    parser.add_argument("--window", type=int, help="trained prompts searched (default: the run's)")
    args = parser.parse_args()
    keys = ["memory -> v", "score -> v", "score ~ memory", "v split-half"]
    print("| run | step | " + " | ".join(keys) + " |")
    print("|" + " --- |" * (len(keys) + 2))
    by_step: dict[int, list[dict[str, float]]] = {}
    for run in args.runs:
        if not (run / "run.json").is_file():
            continue
        for row in audit_signal(run, args.from_step, args.k, args.window):
            by_step.setdefault(row["step"], []).append(row)
            cells = " | ".join(f"{row[k]:+.2f}" for k in keys)
            print(f"| {run.name} | {row['step']} | {cells} |")
    for step, rows in sorted(by_step.items()):
        cells = []
        for k in keys:
            values = [r[k] for r in rows if not math.isnan(r[k])]
            mean = statistics.fmean(values) if values else math.nan
            sd = statistics.stdev(values) if len(values) > 1 else math.nan
            cells.append(f"{mean:+.2f} ± {sd:.2f}")
        print(f"| mean ± sd ({len(rows)} runs) | {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
