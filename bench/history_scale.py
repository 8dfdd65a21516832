"""Do a step's history costs stay flat as a run grows? A synthetic history in a real DuckDB file.

Builds one run's history of --outcomes outcome rows (64 a step: 8 prompts x 8 samples) and
--judgments judgment rows over a 5,000-prompt pool, in step order as a run writes them, then
times what every iteration does against it, early (at step 10) and at the end: the calibration
memory (`recent_variances` of all domains and of one, and the retrieval's `past_outcomes`), and
`record` (`replace_step` of 64 outcomes and 32 judgments, then `record_step`). Each timing is the
best of --repeat.

    .venv/bin/python bench/history_scale.py --outcomes 10000000 --judgments 1000000 --out /tmp/h
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def build(path: Path, outcomes: int, judgments: int) -> int:
    """The synthetic history; returns its last step."""
    import duckdb

    from metis_core.store.outcomes import OutcomeStore

    OutcomeStore(path)  # the schema, as metis creates it
    steps = outcomes // 64
    per_step_judgments = max(1, judgments // steps)
    con = duckdb.connect(str(path))
    con.execute(
        "INSERT INTO prompts SELECT 'p' || i, 'What is ' || i || ' + ' || (i * 7 % 13) || '?', "
        "'1', 'task' || (i % 12), 'd' || (i % 3), CASE WHEN i % 5 = 0 THEN 'code' ELSE 'math' END "
        "FROM range(5000) t(i)"
    )
    con.execute(
        "INSERT INTO outcomes SELECT 'run', i // 64, 'p' || ((i // 64 * 8 + i % 64 // 8) % 5000), "
        "i % 8, CAST(hash(i) % 2 AS DOUBLE), 'x', 5, NULL FROM range(?) t(i)",
        [steps * 64],
    )
    con.execute(
        "INSERT INTO judgments SELECT 'run', i // ?, 'p' || ((i // ? * 8 + i % ?) % 5000), "
        "0.1, true, '0.1', 7, i % 4 = 0, 0.2, 0.9 FROM range(?) t(i)",
        [per_step_judgments, per_step_judgments, per_step_judgments, steps * per_step_judgments],
    )
    con.close()
    return steps - 1


def measure(store, step: int, repeat: int) -> dict[str, float]:
    outcomes = [
        {"run_id": "run", "step": step, "prompt_id": f"p{j}", "sample": s, "reward": 1.0,
         "completion": "x", "completion_tokens": 5, "reason": None}
        for j in range(8) for s in range(8)
    ]  # fmt: skip
    judgments = [
        {"run_id": "run", "step": step, "prompt_id": f"p{j}", "v_hat": 0.1, "parsed": True,
         "text": "0.1", "tokens": 7, "selected": j < 8, "realised_variance": 0.2,
         "judge_reward": 0.9}
        for j in range(32)
    ]  # fmt: skip
    return {
        "memory: recent, all domains (64)": best(
            lambda: store.recent_variances("run", step, 64), repeat
        ),
        "memory: recent, one domain (64)": best(
            lambda: store.recent_variances("run", step, 64, "code"), repeat
        ),
        "memory: retrieval window (256)": best(
            lambda: store.past_outcomes("run", step, 256), repeat
        ),
        "record: replace_step + record_step": best(
            lambda: (
                store.replace_step("run", step, outcomes, judgments),
                store.record_step("run", step, {"a": 1.0}),
            ),
            repeat,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outcomes", type=int, default=10_000_000)
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="folder for the DuckDB file")
    args = parser.parse_args()

    from metis_core.store.outcomes import OutcomeStore

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"history-{args.outcomes}.duckdb"
    start = time.perf_counter()
    if path.exists():
        import duckdb

        with duckdb.connect(str(path), read_only=True) as con:
            last = con.execute("SELECT max(step) FROM outcomes").fetchone()[0]
    else:
        last = build(path, args.outcomes, args.judgments)
    print(f"history: {args.outcomes:,} outcomes, {args.judgments:,} judgments, steps 0..{last} "
          f"({path.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - start:.0f} s to build)")  # fmt: skip
    store = OutcomeStore(path)
    early, late = measure(store, 10, args.repeat), measure(store, last, args.repeat)
    print(
        f"{'seconds (best of ' + str(args.repeat) + ')':40s} {'step 10':>10s} {f'step {last}':>12s}"
    )
    for key in early:
        print(f"{key:40s} {early[key]:10.4f} {late[key]:12.4f}")


if __name__ == "__main__":
    main()
