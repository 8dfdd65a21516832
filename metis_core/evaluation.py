"""`metis eval`: which prompts a benchmark names, which weights a checkpoint names, the results table.

Benchmarks (each domain declares its own, metis_core/domains/; these are the built-in ones):
    humaneval              the 164 HumanEval problems (code; pass@k by the unbiased estimator)
    bfcl:<category>        a BFCL v4 category, e.g. bfcl:simple_python, bfcl:multiple, bfcl:parallel
    heldout                the held-out split of the run's pool (or of --config's pool)

Checkpoints: an HF model folder; `embedded:smollm2-135m-instruct`; a run folder (its latest
checkpoint's HF export); or an MLflow run id of a training run (its `metis.latest_checkpoint`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metis_core import checkpoints
from metis_core.data.pool import prompt_id
from metis_core.domains import benchmark, benchmark_help, domains


class EvalError(ValueError):
    """A benchmark or checkpoint `metis eval` cannot use; the message says what to give instead."""


@dataclass(frozen=True)
class Checkpoint:
    model_path: str
    """What the engine loads: an HF folder or an `embedded:` spec."""
    step: int
    """The training step it was saved at (-1 for weights no run trained)."""
    run_dir: Path | None = None
    """The training run it belongs to, if any (its MLflow run gets the results)."""


def _step_of(path: Path) -> int:
    match = re.search(r"step-(\d+)", str(path))
    return int(match.group(1)) if match else -1


def resolve_checkpoint(spec: str) -> Checkpoint:
    """The model folder, step and run folder a checkpoint spec names (see the module docstring)."""
    if spec.startswith("embedded:"):
        return Checkpoint(spec, -1)
    path = Path(spec)
    if (path / "run.json").is_file() and (path / "checkpoints").is_dir():  # a run folder
        complete = checkpoints.resumable(path / "checkpoints")
        if not complete:
            raise EvalError(f"run folder {spec}: no complete checkpoint under checkpoints/")
        return Checkpoint(str(complete[0].path / "hf"), complete[0].step, path)
    if (path / "hf" / "config.json").is_file():  # a checkpoint tag folder
        path = path / "hf"
    if (path / "config.json").is_file():
        run_dir = next((p for p in path.parents if (p / "run.json").is_file()), None)
        return Checkpoint(str(path), _step_of(path), run_dir)
    raise EvalError(
        f"checkpoint {spec!r}: not an HF model folder, a run folder with checkpoints, or an "
        "`embedded:` model; give e.g. runs/<run id> or runs/<run id>/checkpoints/step-000015/hf"
    )


def check_benchmark_names(names: Sequence[str]) -> None:
    """EvalError for a name that is neither `heldout` nor declared by a domain. Loads nothing,
    so `metis eval` says so at once."""
    for name in names:
        if name == "heldout":
            continue
        try:
            benchmark(name)
        except KeyError:
            raise EvalError(f"unknown benchmark {name!r}; use {benchmark_help()}") from None


def benchmark_rows(name: str, *, limit: int | None, seed: int, pool: Any = None) -> list[dict]:
    """Pool-style rows (with prompt_id) of one benchmark; `pool` is the run's pool for `heldout`.
    Every other benchmark is declared by a domain (metis_core/domains/)."""
    if name == "heldout":
        if pool is None:
            raise EvalError("benchmark 'heldout' needs a run folder checkpoint or --config")
        from metis_core.metrics import spread_over_domains

        held = [dict(r) for r in pool if r["split"] == "heldout"]
        rows = spread_over_domains(held, limit or len(held))
    else:
        check_benchmark_names([name])
        bench, argument = benchmark(name)
        try:
            rows = bench.rows(argument, limit, seed)
        except ValueError as err:
            raise EvalError(f"benchmark {name!r}: {err}") from err
    for row in rows:
        row.setdefault("prompt_id", prompt_id(row["task"], row["prompt"], row["answer"]))
    return rows


def default_benchmarks() -> list[str]:
    """What `metis eval` runs when no benchmark is named: each domain's defaults."""
    return [name for spec in domains() for name in spec.default_benchmarks]


def metric_prefix(benchmark: str) -> str:
    """MLflow metric names allow no ':' — `bfcl:simple_python` logs as `bench/bfcl_simple_python`."""
    return "bench/" + re.sub(r"[^A-Za-z0-9_.-]", "_", benchmark)


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of per-benchmark results (one dict per benchmark, same keys)."""
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"
