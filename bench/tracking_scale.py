"""Do a step's bookkeeping costs stay flat as a run grows? MLflow logging and the steps table.

Writes --steps steps of --metrics metrics each (the size of a mixed-domain iteration's metrics)
as a run does: `Tracker.log_metrics` into a real MLflow store (the default sqlite file, or
--tracking-uri, e.g. a `metis services up` server) and `OutcomeStore.record_step` into a real
DuckDB file, with a held-out evaluation every --eval-every steps. It times, early (at step 10)
and at the last step: logging one step to MLflow, recording one step in DuckDB, and what a
checkpoint asks of the steps table (the latest held-out accuracy), both as metis asks it now
(`latest_metric`, one row) and as a full scan of every step (`step_metrics`). Each timing is the
best of --repeat.

    .venv/bin/python bench/tracking_scale.py --steps 5000 --out /tmp/tracking
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from statistics import median

from history_scale import best  # (bench/ is on the path: these run as scripts)


def step_metrics(step: int, n: int, eval_every: int, rng: random.Random) -> dict[str, float]:
    metrics = {f"train/task_{i:03d}/reward_mean": rng.random() for i in range(n)}
    if step % eval_every == 0:
        metrics |= {"eval/avg_at_4": rng.random(), "eval/pass_at_4": rng.random()}
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000, help="steps the synthetic run has")
    parser.add_argument("--metrics", type=int, default=150, help="metrics logged per step")
    parser.add_argument("--eval-every", type=int, default=8, help="steps between evaluations")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many timings")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the stores")
    args = parser.parse_args()

    from tqdm.auto import tqdm

    from metis_core.store.outcomes import OutcomeStore
    from metis_core.tracking.mlflow_tracker import Tracker, default_tracking_uri

    args.out.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or default_tracking_uri(args.out)
    tracker = Tracker(uri, "tracking-scale", args.out / "mlartifacts")
    tracker.start(f"scale-{int(time.time())}", system_metrics=False)
    store = OutcomeStore(args.out / "history.duckdb")
    run_id, rng = "scale", random.Random(0)
    key = "eval/avg_at_4"

    def queries() -> dict[str, float]:
        return {
            "latest accuracy (latest_metric)": best(
                lambda: store.latest_metric(run_id, key), args.repeat
            ),
            "latest accuracy (full scan)": best(
                lambda: [m[key] for _, m in store.step_metrics(run_id) if key in m][-1],
                args.repeat,
            ),
        }

    log_s, record_s, asked = [], [], {}
    last = args.steps - 1
    for step in tqdm(range(args.steps), desc="steps", unit="step", mininterval=5):
        metrics = step_metrics(step, args.metrics, args.eval_every, rng)
        start = time.perf_counter()
        tracker.log_metrics(metrics, step)
        log_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        store.record_step(run_id, step, metrics)
        record_s.append(time.perf_counter() - start)
        if step in (10, last):
            asked[step] = queries()
    tracker.end("FINISHED")

    window = min(20, max(1, args.steps // 4))
    early, late = slice(10, 10 + window), slice(args.steps - window, args.steps)
    print(f"{args.metrics} metrics a step, steps 0..{last}, MLflow at {uri}")
    print(f"{'what (seconds)':34s} {'step 10':>10s} {'step ' + str(last):>12s}")
    for what, times in (("mlflow log_metrics", log_s), ("duckdb record_step", record_s)):
        print(f"{what:34s} {median(times[early]):10.4f} {median(times[late]):12.4f}"
              f"  (median of steps {early.start}..{early.stop - 1} and the last {window})")  # fmt: skip
    for what in asked[10]:
        print(f"{what:34s} {asked[10][what]:10.4f} {asked[last][what]:12.4f}"
              f"  (best of {args.repeat})")  # fmt: skip


if __name__ == "__main__":
    main()
