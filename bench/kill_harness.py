"""Kill a tiny metis run again and again, resume it each time, and compare it with a run never killed.

    python bench/kill_harness.py --out /tmp/kills --random 20 --seed 0      # SIGKILLs at random times
    python bench/kill_harness.py --out /tmp/kills --points judge@0 update@1  # at chosen failpoints

Each run is `metis train --run-id <name>` on a tiny random Llama (built under --out), restarted
with the same command after every kill, as a user or a Prefect retry would. A run passes when its
outcome rows and judgments equal the reference run's, its final weights are within --tolerance of
the reference's, and MLflow holds exactly one value per metric per step (each metric at every step
the reference logged it, once), equal to the reference's for every metric but wall-clock ones. One JSON line per run
goes to <out>/results.jsonl (resumable: runs already there are skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# trainer.precision and model.dtype stay at their default, auto: the kills test the precision a
# user's run gets on this machine (bf16 where the hardware multiplies it natively, else fp32)
TINY_OVERRIDES = [
    "steps=3",
    "curriculum.batch_prompts=2",
    "curriculum.pool_multiplier=3",
    "rollout.n=4",
    "eval.every=2",
    "eval.max_prompts=4",
    "eval.samples=2",
    "trainer.micro_batch_size=4",
    "trainer.lr=1e-3",
    "checkpoint_every=1",
    "judge.lam=0.5",
    "rollout.top_p=0.8",
    "eval.audit_prompts=6",
]


def environment(home: Path, kill_at: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "METIS_KILL_AT"):
        env.pop(name, None)
    if kill_at:
        env["METIS_KILL_AT"] = kill_at
    return env


def command(model: Path, output_dir: Path, run_id: str) -> list[str]:
    sets = [f"model.path={model}", f"output_dir={output_dir}", *TINY_OVERRIDES]
    return [
        sys.executable,
        "-m",
        "flows.cli",
        "train",
        "--run-id",
        run_id,
        *[a for s in sets for a in ("--set", s)],
    ]


def start(model: Path, output_dir: Path, run_id: str, log: Path, kill_at: str | None = None):
    return subprocess.Popen(
        command(model, output_dir, run_id),
        cwd=REPO,
        env=environment(output_dir, kill_at),
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the run and its temporary Prefect server: one process group
    )


def stop_group(proc: subprocess.Popen) -> int:
    """SIGKILL whatever is left of the run's process group (its Prefect server), return its code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=120)


def finished(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    return info.is_file() and bool(json.loads(info.read_text()).get("finished"))


def run_to_end(
    model: Path, output_dir: Path, run_id: str, kills: list[str | float], log: Path
) -> int:
    """Run `run_id`, killing it at each of `kills` in turn (a failpoint `<point>@<step>`, or a
    delay in seconds after the start of that attempt), then let it finish. Returns the number of
    kills that landed before the run finished."""
    landed = 0
    for kill in kills:
        at = kill if isinstance(kill, str) else None
        proc = start(model, output_dir, run_id, log, kill_at=at)
        if at is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=float(kill))
        else:
            proc.wait(timeout=900)
        code = proc.poll()
        stop_group(proc)
        if code == 0:  # finished before the kill
            return landed
        landed += 1
    proc = start(model, output_dir, run_id, log)
    if proc.wait(timeout=900) != 0:
        raise RuntimeError(f"{run_id}: the last resume failed; see {log}")
    stop_group(proc)
    return landed


def snapshot(run_dir: Path) -> dict[str, Any]:
    """What must not depend on kills: outcome rows, judgments, steps present, final weights."""
    import duckdb
    from safetensors.torch import load_file

    from metis_core import checkpoints

    con = duckdb.connect(str(run_dir / "history.duckdb"), read_only=True)
    try:
        tables = {
            t: con.execute(f"SELECT * EXCLUDE (run_id) FROM {t} ORDER BY ALL").fetchall()
            for t in ("outcomes", "judgments")
        }
        tables["steps"] = con.execute("SELECT step FROM steps ORDER BY step").fetchall()
    finally:
        con.close()
    (newest, *_) = checkpoints.resumable(run_dir / "checkpoints")
    weights = load_file(str(newest.path / "hf" / "model.safetensors"))
    return {"tables": tables, "weights": weights, "step": newest.step}


def mlflow_values(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> (step, value) of every value MLflow holds for it, sorted; MLflow's system
    metrics (the machine's load, sampled every 10 s, not part of the run's record) left out."""
    from mlflow.tracking import MlflowClient

    info = json.loads((run_dir / "run.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    keys = client.get_run(info["mlflow_run_id"]).data.metrics
    return {
        key: sorted(
            (m.step, m.value) for m in client.get_metric_history(info["mlflow_run_id"], key)
        )
        for key in keys
        if not key.startswith("system/")
    }


def _timing(key: str) -> bool:
    """Metrics of the machine, which no two runs share: wall-clock, the process's memory."""
    return key.startswith(("time/", "memory/")) or "seconds" in key


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]], tolerance: float = 1e-6) -> bool:
    """The same steps with the same values, up to float32's last bits (1e-6): a resumed process
    can round a sum differently, MKL's kernels being reproducible only within a process (seen
    once: one judgment token's log-prob one ulp apart, the weights then 6e-9 apart)."""
    return len(a) == len(b) and all(
        sa == sb and math.isclose(va, vb, rel_tol=tolerance, abs_tol=tolerance)
        for (sa, va), (sb, vb) in zip(a, b, strict=True)
    )


def compare(reference: Path, killed: Path, metric_tolerance: float = 1e-6) -> dict[str, Any]:
    a, b = snapshot(reference), snapshot(killed)
    gap = max((a["weights"][k] - b["weights"][k]).abs().max().item() for k in a["weights"])
    expected, logged = mlflow_values(reference), mlflow_values(killed)
    steps = {k: [s for s, _ in v] for k, v in logged.items()}
    return {
        "outcomes_identical": a["tables"]["outcomes"] == b["tables"]["outcomes"],
        "judgments_identical": a["tables"]["judgments"] == b["tables"]["judgments"],
        "steps_identical": a["tables"]["steps"] == b["tables"]["steps"],
        "final_step": b["step"],
        "max_weight_gap": gap,
        "mlflow_duplicates": {
            k: sorted({s for s in v if v.count(s) > 1})
            for k, v in steps.items()
            if len(set(v)) < len(v)
        },
        "mlflow_missing": {
            k: sorted({s for s, _ in v} - set(steps.get(k, [])))
            for k, v in expected.items()
            if {s for s, _ in v} - set(steps.get(k, []))
        },
        "mlflow_values_differ": sorted(
            k
            for k, v in expected.items()
            if not _timing(k) and not _same(v, logged.get(k, []), metric_tolerance)
        ),
    }


def passed(result: dict[str, Any], tolerance: float) -> bool:
    return (
        result["outcomes_identical"]
        and result["judgments_identical"]
        and result["steps_identical"]
        and result["max_weight_gap"] <= tolerance
        and not result["mlflow_duplicates"]
        and not result["mlflow_missing"]
        and not result["mlflow_values_differ"]
    )


def tiny_model(out: Path) -> Path:
    from metis_core.model.weights import embedded_tokenizer, make_tiny_llama

    path = out / "tiny-llama"
    if not (path / "config.json").is_file():
        make_tiny_llama(path, embedded_tokenizer())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (resumable)")
    parser.add_argument("--random", type=int, default=0, help="SIGKILLs at random times, in all")
    parser.add_argument("--kills-per-run", type=int, default=3)
    parser.add_argument("--points", nargs="*", default=[], help="failpoints, e.g. judge@0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.0, help="max |weight gap|")
    parser.add_argument(
        "--window", type=float, default=0.0,
        help="random kills fall 3 s to this many seconds into an attempt (default: the reference "
        "run's time, measured on this machine and kept in <out>/reference.json)",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = tiny_model(args.out)
    runs = args.out / "runs"
    timing = args.out / "reference.json"
    if not finished(runs / "reference"):
        started = time.perf_counter()
        run_to_end(model, runs, "reference", [], args.out / "reference.log")
        timing.write_text(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))
        print(f"reference run: {json.loads(timing.read_text())['seconds']:.0f} s")
    window = args.window or (json.loads(timing.read_text())["seconds"] if timing.is_file() else 75)
    results = args.out / "results.jsonl"
    done = (
        {json.loads(line)["run"] for line in results.read_text().splitlines()}
        if results.is_file()
        else set()
    )
    plans: list[tuple[str, list[str | float]]] = []
    if args.points:
        plans.append(("points-" + "-".join(args.points), list(args.points)))
    rng = random.Random(args.seed)
    for i in range(-(-args.random // args.kills_per_run)):
        # within the time a whole unkilled attempt takes on this machine (start-up included), so
        # kills land in start-up, steps, checkpoints and resumes, not after the run has finished
        kills = [round(rng.uniform(3, window), 1) for _ in range(args.kills_per_run)]
        plans.append((f"random-{args.seed}-{i}", kills))
    for name, kills in plans:
        if name in done:
            continue
        started = time.perf_counter()
        landed = run_to_end(model, runs, name, kills, args.out / f"{name}.log")
        result = {"run": name, "kills": kills, "landed": landed}
        result |= compare(runs / "reference", runs / name)
        result["passed"] = passed(result, args.tolerance)
        result["seconds"] = round(time.perf_counter() - started)
        with results.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
