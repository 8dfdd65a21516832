"""Summarise finished training runs, one row each, then the mean and standard deviation over them.

    .venv/bin/python bench/summarize_runs.py runs/metis-default-*        # e.g. three seeds

Reads each run's metrics from MLflow (the run folder's run.json says where): held-out avg@k
before training (step -1), at the middle evaluation and at the end; the judge audit (random
prompts) and the judge's quality on the selected prompts, averaged over the steps from
--from-step on; the share of zero-variance groups; the engine/trainer log-prob gap; seconds per
iteration and the judge stage's share of it. Columns a run did not log are NaN. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def summarize(run_dir: Path, first_step: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    info = json.loads((run_dir / "run.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    run_id = info["mlflow_run_id"]
    k = config["eval"]["samples"]
    evals = _history(client, run_id, f"eval/avg_at_{k}")
    steps = sorted(s for s in evals if s >= 0)

    def after_warmup(*keys: str) -> float:
        """The first of `keys` the run logged (metric names from older versions come second)."""
        for key in keys:
            values = _history(client, run_id, key)
            if values:
                return _mean([v for s, v in values.items() if s >= first_step])
        return math.nan

    row = {
        "seed": config["seed"],
        f"avg@{k} start": evals.get(-1, math.nan),
        f"avg@{k} mid": evals[steps[len(steps) // 2 - 1]] if len(steps) > 1 else math.nan,
        f"avg@{k} end": evals[steps[-1]] if steps else math.nan,
    }
    for keys, name in (
        (("audit/spearman",), "audit rho"),
        (("audit/top_b_lift",), "audit top-B lift"),
        (("audit/top_b_nonzero_share",), "audit top-B non-zero"),
        (("audit/nonzero_share",), "audit non-zero"),
        (("judge/selected/spearman", "judge/spearman"), "judge rho (selected)"),
        (("judge/selected/mae", "judge/mae"), "judge MAE (selected)"),
        (("judge/selected/mean_v_hat", "judge/mean_v_hat"), "mean v_hat (selected)"),
        (("judge/selected/mean_v", "judge/mean_v"), "mean v (selected)"),
        (("judge/parse_failure_rate",), "parse failures"),
        (("train/zero_variance_fraction",), "zero-var share"),
        (("train/reward_mean",), "train reward"),
        (("mismatch/logprob_gap_mean",), "logprob gap"),
        (("time/iteration_s",), "s / iteration"),
    ):
        row[name] = after_warmup(*keys)
    # what the issue's goals are stated in: the selected prompts' non-zero-variance share (also
    # as a multiple of the audit's, i.e. of chance) and the judge stage's share of the iteration
    row["selected non-zero"] = 1.0 - row["zero-var share"]
    row["selected / audit non-zero"] = row["selected non-zero"] / row["audit non-zero"]
    judge_s = _history(client, run_id, "time/judge_s")
    iteration_s = _history(client, run_id, "time/iteration_s")
    row["judge share of iteration"] = _mean(
        [judge_s[s] / iteration_s[s] for s in judge_s if s >= first_step and s in iteration_s]
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with run.json)")
    parser.add_argument(
        "--from-step", type=int, default=1, help="average per-step metrics from this step on"
    )
    args = parser.parse_args()
    rows = [summarize(r, args.from_step) for r in args.runs if (r / "run.json").is_file()]
    if not rows:
        raise SystemExit("no run folders with run.json among the arguments")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for row in rows:
        print(
            "| " + " | ".join(f"{row[k]:.3f}" if k != "seed" else str(row[k]) for k in keys) + " |"
        )
    if len(rows) > 1:
        cells = []
        for k in keys[1:]:
            values = [r[k] for r in rows if not math.isnan(r[k])]
            sd = statistics.stdev(values) if len(values) > 1 else math.nan
            cells.append(f"{_mean(values):.3f} ± {sd:.3f}")
        print(f"| mean ± sd ({len(rows)} runs) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
