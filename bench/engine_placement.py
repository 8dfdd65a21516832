"""The engine in the trainer's process against the engine in a process of its own
(`model.engine=in_process` / `separate`): iteration and sync times of a short `metis train` run
with each, and the time of one weight push alone.

Each placement runs `metis train` for a few iterations (no evaluation, no checkpoint) in a fresh
process; the table holds per-stage means over the iterations after the first (which pays vLLM's
and DeepSpeed's warm-up). Then each engine is started on the same model and handed the model's
own weights a few times: the push alone, without the sync stage's probes.

    .venv/bin/python bench/engine_placement.py --steps 3            # the CPU default config
    .venv/bin/python bench/engine_placement.py --steps 2 --tiny     # the tiny test model (fast)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PLACEMENTS = ("in_process", "separate")
STAGES = ("iteration", "sync", "rollout", "judge", "update")


def train(placement: str, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    """Mean seconds per stage over the iterations after the first, and the whole command's."""
    out = Path(args.output_dir) / placement
    overrides = [
        f"steps={args.steps}",
        "eval.every=0",
        "checkpoint_every=0",
        f"output_dir={out}",
        f"name=bench-{placement}",
        f"model.engine={placement}",
        *extra,
    ]
    command = [sys.executable, "-m", "flows.cli", "train", "--config", args.config]
    started = time.perf_counter()
    subprocess.run(command + [x for o in overrides for x in ("--set", o)], cwd=REPO, check=True)
    total = time.perf_counter() - started
    run_dir = max(
        (p for p in out.iterdir() if (p / "run.json").is_file()), key=lambda p: p.stat().st_mtime
    )
    info = json.loads((run_dir / "run.json").read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["tracking_uri"])
    means = {"command": total}
    for stage in STAGES:
        history = client.get_metric_history(info["mlflow_run_id"], f"time/{stage}_s")
        values = {m.step: m.value for m in history}
        measured = [v for s, v in values.items() if s > 0] or list(values.values())
        means[stage] = statistics.mean(measured) if measured else float("nan")
    return means


def push_seconds(placement: str, model_dir: Path, dtype: str, repeats: int) -> list[float]:
    """Seconds of each of `repeats` load_weights of the model's own weights."""
    from transformers import AutoModelForCausalLM

    from metis_core.engine import open_engine

    weights = list(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
    engine = open_engine(placement, model_dir, dtype, 1024, 0)  # type: ignore[arg-type]
    try:
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            engine.load_weights((n, p.detach()) for n, p in weights)
            seconds.append(time.perf_counter() - started)
        return seconds
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=3, help="iterations per placement")
    parser.add_argument("--tiny", action="store_true", help="the tiny random model, not SmolLM2")
    parser.add_argument("--pushes", type=int, default=3, help="timed weight pushes per engine")
    parser.add_argument("--output-dir", default="runs/bench-engine-placement")
    args = parser.parse_args()

    from metis_core.config_loading import load_config
    from metis_core.model.weights import (
        configure_runtime_environment,
        embedded_tokenizer,
        make_tiny_llama,
        resolve_model,
    )

    configure_runtime_environment()
    extra: list[str] = []
    if args.tiny:
        model = Path(args.output_dir) / "tiny-llama"
        if not (model / "config.json").is_file():
            make_tiny_llama(model, embedded_tokenizer())
        extra = [f"model.path={model.resolve()}", "model.dtype=float32", "trainer.precision=fp32"]
    cfg = load_config(args.config, extra)
    model_dir = Path(resolve_model(cfg.model.path))

    runs = {p: train(p, args, extra) for p in PLACEMENTS}
    pushes = {p: push_seconds(p, model_dir, cfg.model.dtype, args.pushes) for p in PLACEMENTS}
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20

    print(f"\nmodel {cfg.model.path} ({size:.0f} MiB of safetensors), engine {cfg.model.dtype}")
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, {args.steps} steps")
    print("\n| seconds (mean over steps 1..) | " + " | ".join(PLACEMENTS) + " |")
    print("| --- | " + " | ".join("---" for _ in PLACEMENTS) + " |")
    for stage in (*STAGES, "command"):
        print(f"| {stage} | " + " | ".join(f"{runs[p][stage]:.2f}" for p in PLACEMENTS) + " |")
    print(
        "| weight push alone (median) | "
        + " | ".join(f"{statistics.median(pushes[p]):.3f}" for p in PLACEMENTS)
        + " |"
    )
    print("\npushes:", {p: [round(s, 3) for s in v] for p, v in pushes.items()})


if __name__ == "__main__":
    main()
