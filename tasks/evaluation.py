"""The Prefect tasks of metis-eval: open the policy, run one benchmark, log the results.

Like the training stages they pass small values (an evaluation id, names, file paths); the live
engine stays in this process, in tasks/runtime.py under the evaluation id.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from metis_core.config import RunConfig
from metis_core.evaluation import benchmark_rows, metric_prefix
from metis_core.metrics import accuracy_metrics
from metis_core.ports import Engine, Tracker
from metis_core.run import derive_seed, task_prompt_ids, write_json
from metis_core.stages.generation import sample_and_score
from tasks.runtime import lookup

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass
class Evaluation:
    cfg: RunConfig
    engine: Engine
    out_dir: Path
    tracker: Tracker
    """Where the results go in MLflow: the training run's, or a run of the evaluation's own."""
    pool: Dataset | None = None
    """The training run's pool (for the `heldout` benchmark), if there is one."""


@task(name="benchmark", cache_policy=NO_CACHE, task_run_name="benchmark-{benchmark}")
def run_benchmark(
    eval_id: str,
    benchmark: str,
    samples: int,
    max_prompts: int | None,
    temperature: float,
    seed: int,
) -> dict[str, Any]:
    """k samples per prompt of one benchmark, scored; returns its row of the results table."""
    ev = lookup(eval_id, Evaluation)
    started = time.perf_counter()
    rows = benchmark_rows(benchmark, limit=max_prompts, seed=seed, pool=ev.pool)
    prompts = [task_prompt_ids(ev.cfg, ev.engine.tokenizer, r) for r in rows]
    keep = [i for i, p in enumerate(prompts) if len(p) <= ev.cfg.data.max_prompt_tokens]
    left_out = len(rows) - len(keep)
    rows, prompts = [rows[i] for i in keep], [prompts[i] for i in keep]
    if not rows:
        raise ValueError(
            f"{benchmark}: every prompt is longer than data.max_prompt_tokens="
            f"{ev.cfg.data.max_prompt_tokens}; raise it (and model.max_model_len)"
        )
    results = sample_and_score(
        ev.engine,
        ev.cfg,
        rows,
        prompts,
        k=samples,
        temperature=temperature,
        seed=derive_seed(seed, benchmark),
    )
    safe = metric_prefix(benchmark).split("/", 1)[1]
    write_json(ev.out_dir / "samples" / f"{safe}.json", results)
    prefix = metric_prefix(benchmark)
    metrics = accuracy_metrics(results, samples, prefix=prefix)
    return {
        "benchmark": benchmark,
        "prompts": len(rows),
        "left_out": left_out,
        "k": samples,
        f"avg@{samples}": metrics[f"{prefix}/avg_at_{samples}"],
        "pass@1": metrics[f"{prefix}/pass_at_1"],
        f"pass@{samples}": metrics[f"{prefix}/pass_at_{samples}"],
        "seconds": round(time.perf_counter() - started, 1),
        "metrics": metrics,
    }


@task(name="log-results", cache_policy=NO_CACHE)
def log_results(eval_id: str, step: int, table: list[dict[str, Any]], markdown: str) -> None:
    """Metrics at the checkpoint's step, plus the results table and its markdown as artifacts."""
    ev = lookup(eval_id, Evaluation)
    tracker, out_dir = ev.tracker, ev.out_dir
    metrics: dict[str, float] = {}
    for row in table:
        metrics |= row["metrics"]
    tracker.log_metrics(metrics, step)
    stamp = out_dir.name
    rows = [{k: v for k, v in r.items() if k != "metrics"} for r in table]
    tracker.log_table(rows, f"eval/{stamp}/results.json")
    tracker.log_text(markdown, f"eval/{stamp}/results.md")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
