"""Per-stage time breakdown of METIS iterations on a config (default: the CPU default).

Runs `metis train` for a few iterations (no evaluation, one checkpoint at the end), then reads the
per-stage times every iteration logged to MLflow and prints a table: mean seconds per stage, its
share of the iteration, the judgment's share, and the share spent outside the model (history,
select, verify, record, logging, and Prefect's own overhead between tasks).

    .venv/bin/python bench/iteration_breakdown.py --config configs/default.yaml --steps 5
    .venv/bin/python bench/iteration_breakdown.py --run-dir runs/<run id> --peak 0.174

A run this script starts goes to a new folder under runs/ that is removed after the report (its
final checkpoint and registered model take about 3 GB for SmolLM2-135M, so repeated runs fill a
disk), unless --keep or --output-dir says to keep it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metis_core.openmp import configure_openmp  # noqa: E402

configure_openmp()  # as `metis` does, before torch loads (metis_core/openmp.py)

MODEL_STAGES = ("judge", "rollout", "update", "sync", "evaluate", "audit", "checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="iterations to run; the first is reported apart as warm-up",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where the run goes, kept after the report (default: a new folder under runs/, removed)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder after the report"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="report on this finished run (any config, any commit) instead of starting one",
    )
    parser.add_argument(
        "--peak",
        type=float,
        help="this machine's whole-model TFLOP/s (bench/roofline.py) to rate each stage against",
    )
    args = parser.parse_args()
    if any(o.split("=", 1)[0].strip() == "output_dir" for o in args.overrides):
        parser.error(
            "use --output-dir, not --set output_dir=...: the report looks for the run there"
        )

    run_dir = args.run_dir
    scratch: Path | None = None  # the folder to remove after the report
    try:
        total: float | None = None  # seconds of the whole command, when this script ran it
        if run_dir is None:
            output_dir = args.output_dir
            if output_dir is None:
                Path("runs").mkdir(exist_ok=True)
                output_dir = Path(tempfile.mkdtemp(prefix="bench-", dir="runs"))
                scratch = None if args.keep else output_dir
            started = time.time()
            run_dir = train(args.config, args.steps, output_dir, args.overrides)
            total = time.time() - started
        report(run_dir, total, args.peak)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            print(f"removed {scratch} (--keep keeps the run)")


def train(config: str, steps: int, output_dir: Path, overrides: list[str]) -> Path:
    """`metis train` for `steps` iterations (no evaluation, one checkpoint at the end); its folder."""
    from flows.cli import main as metis

    sets = [
        f"steps={steps}",
        "eval.every=0",
        "checkpoint_every=0",
        f"output_dir={output_dir}",
        "name=bench",
        *overrides,
    ]
    metis(["train", "--config", config, *[x for o in sets for x in ("--set", o)]])
    return max(
        (p for p in output_dir.iterdir() if (p / "run.json").is_file()),
        key=lambda p: p.stat().st_mtime,
    )


def report(run_dir: Path, total: float | None, peak: float | None) -> None:
    """The stage table, each step's seconds, each stage's work and rate, and the peak RSS."""
    info = json.loads((run_dir / "run.json").read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["tracking_uri"])
    metrics = client.get_run(info["mlflow_run_id"]).data.metrics
    keys = sorted(k for k in metrics if k.startswith("time/") and k.endswith("_s"))
    per_step: dict[str, dict[int, float]] = {
        k: {m.step: m.value for m in client.get_metric_history(info["mlflow_run_id"], k)}
        for k in keys
    }
    steps = sorted(per_step["time/iteration_s"])
    measured = [s for s in steps if s > 0] or steps  # step 0 pays vLLM/DeepSpeed warm-up
    mean = {k[5:-2]: statistics.mean(per_step[k].get(s, 0.0) for s in measured) for k in keys}
    iteration = mean.pop("iteration")
    inside = sum(v for k, v in mean.items() if k in MODEL_STAGES)
    command = "a finished run" if total is None else f"whole command {total:.0f} s"
    print(f"\nrun {run_dir}  ({len(measured)} measured iterations after warm-up; {command})")
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    )
    print("\n| stage | mean s | share of iteration |\n| --- | --- | --- |")
    for stage, seconds in sorted(mean.items(), key=lambda kv: -kv[1]):
        print(f"| {stage} | {seconds:.2f} | {seconds / iteration:.1%} |")
    # the log stage's own time is not among the stage times (it writes them), so it lands here
    rest = iteration - sum(mean.values())
    print(
        f"| log (DuckDB steps row, MLflow) + Prefect overhead | {rest:.2f} | {rest / iteration:.1%} |"
    )
    print(f"| **iteration** | **{iteration:.2f}** | 100% |")
    print(f"\njudgment share of iteration: {mean.get('judge', 0.0) / iteration:.1%}")
    print(
        f"outside the model (orchestration, DuckDB, MLflow, scoring): {(iteration - inside) / iteration:.1%}"
    )
    if 0 in per_step["time/iteration_s"]:
        print(f"warm-up iteration (step 0): {per_step['time/iteration_s'][0]:.1f} s")
    step_table(steps, per_step)
    work_table(run_dir, measured, per_step, peak)
    if "memory/peak_rss_gib" in metrics:  # the flow's process: in-process engine and trainer
        print(f"peak RSS of the run's process: {metrics['memory/peak_rss_gib']:.2f} GiB")


def step_table(steps: list[int], per_step: dict[str, dict[int, float]]) -> None:
    """Each step's seconds in the model stages and in all: the spread between steps doing the
    same work is the run-to-run noise a difference between two runs must clear."""
    stages = [s for s in ("judge", "rollout", "update") if f"time/{s}_s" in per_step]
    print("\n| step | " + " | ".join(stages) + " | iteration |")
    print("| --- |" + " --- |" * (len(stages) + 1))
    for step in steps:
        cells = [per_step[f"time/{s}_s"].get(step) for s in stages]
        cells.append(per_step["time/iteration_s"].get(step))
        shown = ["-" if c is None else f"{c:.2f}" for c in cells]
        print(f"| {step} | " + " | ".join(shown) + " |")


def work_table(
    run_dir: Path, steps: list[int], per_step: dict[str, dict[int, float]], peak: float | None
) -> None:
    """Each model stage's work (bench/stage_work.py) and the rate it ran at, over `steps`."""
    from bench.stage_work import model_size, stage_work
    from metis_core.model.weights import resolve_model

    config = json.loads((run_dir / "config.json").read_text())
    size = model_size(resolve_model(config["model"]["path"]))
    trains_judge = config["judge"]["lam"] > 0
    done: dict[str, list[tuple[float, float]]] = {}
    for step in steps:
        work = stage_work(run_dir / "steps" / f"{step:06d}", size, trains_judge)
        for stage, tflop in work.items():
            seconds = per_step.get(f"time/{stage}_s", {}).get(step)
            if seconds:
                done.setdefault(stage, []).append((tflop, seconds))
    print(
        f"\nmodel work per iteration (body {size.body / 1e6:.1f}M + LM head {size.head / 1e6:.1f}M"
        " parameters; bench/stage_work.py)"
    )
    print("\n| stage | TFLOP | TFLOP/s | of the peak |\n| --- | --- | --- | --- |")
    for stage, pairs in done.items():
        tflop = sum(t for t, _ in pairs) / len(pairs)
        rate = sum(t for t, _ in pairs) / sum(s for _, s in pairs)
        share = f"{rate / peak:.0%}" if peak else "-"
        print(f"| {stage} | {tflop:.3f} | {rate:.3f} | {share} |")


if __name__ == "__main__":
    main()
