"""A training run's live parts (engine, trainer, store, tracker, sampler) and its folder.

Stages receive a `Run` and a step number and hand each other small files under
`<run_dir>/steps/<step>/`, so a resumed run (or a cached Prefect task) picks them up from disk.

    <output_dir>/<run_id>/
        config.json          the resolved config
        run.json             run id, MLflow run id
        pool.parquet         the prompt pool with its split
        history.duckdb       the outcome history
        steps/000003/*.json  stage hand-offs of iteration 3
        checkpoints/         DeepSpeed checkpoints (+ an HF export of the policy)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metis_core.algorithms import MovingAverageBaseline
from metis_core.config import RunConfig
from metis_core.domains import task_chat
from metis_core.ports import Engine, Store, Tokenizer, Tracker, Trainer
from metis_core.samplers import Sampler, make_sampler

if TYPE_CHECKING:  # only annotated: importing datasets costs a second
    from datasets import Dataset

log = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, data: Any) -> Path:
    """Write atomically: a crash mid-write never leaves a half file for a resumed run to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, default=float))
    tmp.replace(path)
    return path


@dataclass
class Run:
    cfg: RunConfig
    run_id: str
    run_dir: Path
    model_dir: Path
    pool: Dataset
    """The prompt pool with prompt_id, prompt, answer, task, difficulty, metadata, split."""
    engine: Engine
    trainer: Trainer
    store: Store
    tracker: Tracker
    sampler: Sampler
    baseline: MovingAverageBaseline
    start_step: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    """Cumulative spend (rollouts, tokens, value-model passes, seconds); checkpointed so a resumed
    run keeps counting."""
    step_spend: dict[str, float] = field(default_factory=dict)
    """This iteration's share of `totals` (reset at every iteration, like stage_seconds)."""
    iteration_started: float = field(default_factory=time.perf_counter)
    _prompt_tokens: dict[str, list[int]] = field(default_factory=dict)
    _rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _train_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ---- folders and hand-off files -------------------------------------------------------------
    def step_dir(self, step: int) -> Path:
        return self.run_dir / "steps" / (f"{step:06d}" if step >= 0 else "initial")

    def step_file(self, step: int, name: str) -> Path:
        return self.step_dir(step) / f"{name}.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def rng(self, step: int, purpose: str) -> np.random.Generator:
        """A generator seeded by (seed, step, purpose): a replayed step draws the same numbers."""
        return np.random.default_rng(derive_seed(self.cfg.seed, step, purpose))

    def engine_seed(self, step: int, purpose: str) -> int:
        """The seed of one engine call, from (seed, step, purpose): a replay samples the same."""
        return derive_seed(self.cfg.seed, step, purpose)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] = (
                self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start
            )

    def iteration_seconds(self) -> float:
        """Wall-clock since this iteration started, Prefect's own overhead included."""
        return time.perf_counter() - self.iteration_started

    def charge(self, kind: str, amount: float) -> None:
        """Count spend of one kind into the totals and this iteration's share of them."""
        self.totals[kind] = self.totals.get(kind, 0) + amount
        self.step_spend[kind] = self.step_spend.get(kind, 0) + amount

    # ---- prompts -------------------------------------------------------------------------------
    def rows(self, split: str) -> list[dict[str, Any]]:
        """Pool rows of one split ("train" or "heldout"), materialised once per run."""
        if split not in self._rows:
            self._rows[split] = [r for r in self.pool if r["split"] == split]
        return self._rows[split]

    def train_row(self, prompt_id: str) -> dict[str, Any]:
        if not self._train_by_id:
            self._train_by_id.update((r["prompt_id"], r) for r in self.rows("train"))
        return self._train_by_id[prompt_id]

    def task_prompt_ids(self, row: dict[str, Any]) -> list[int]:
        """Chat-formatted task prompt (the domain's system prompt + problem + prefill) as ids."""
        pid = row["prompt_id"]
        if pid not in self._prompt_tokens:
            self._prompt_tokens[pid] = task_prompt_ids(self.cfg, self.engine.tokenizer, row)
        return self._prompt_tokens[pid]

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self.engine.tokenizer.encode(text, add_special_tokens=False)
        return (
            text
            if len(ids) <= max_tokens
            else self.engine.tokenizer.decode(ids[:max_tokens]) + " ..."
        )

    # ---- state that checkpoints carry ----------------------------------------------------------
    def client_state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "sampler": self.sampler.state_dict(),
            "judge_baseline": self.baseline.state_dict(),
            "totals": dict(self.totals),
        }

    def load_client_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.baseline.load_state_dict(state["judge_baseline"])
        self.totals = dict(state.get("totals", {}))
        self.start_step = int(state["step"]) + 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends on every part and on nothing else (no process, no hash salt)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def task_prompt_ids(cfg: RunConfig, tokenizer: Tokenizer, row: dict[str, Any]) -> list[int]:
    messages, prefill = task_chat(cfg, row)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text + prefill, add_special_tokens=False)


def new_sampler(cfg: RunConfig) -> Sampler:
    return make_sampler(cfg.curriculum)


def trains_judge(cfg: RunConfig, sampler: Sampler) -> bool:
    return sampler.needs_judgment and cfg.judge.lam > 0
