"""The prompt pool: every `data.tasks` entry (math generators, code tasks, BFCL, ...) -> HF Dataset.

Every row: prompt_id (a hash of task + prompt + answer, stable across runs and machines), prompt,
answer, task, difficulty, metadata (JSON), domain, reward (the scorer's name), split ("train" or
"heldout"). The held-out split is chosen by the prompt id's hash, so it stays disjoint and stable
when the pool grows. Each source's loader is declared by its domain (metis_core/domains/).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset

from metis_core.config import DataConfig, TaskSpec
from metis_core.data.files import load_table

COLUMNS = (
    "prompt_id",
    "prompt",
    "answer",
    "task",
    "difficulty",
    "metadata",
    "domain",
    "reward",
    "split",
)
log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset file or row the pool cannot use; the message names the row and the fix."""


def prompt_id(task: str, prompt: str, answer: str) -> str:
    return hashlib.sha1(f"{task}\x1f{prompt}\x1f{answer}".encode()).hexdigest()[:16]


def _split_of(pid: str, heldout_fraction: float, seed: int) -> str:
    h = int(hashlib.sha1(f"{seed}:{pid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_fraction else "train"


def _spec_rows(spec: TaskSpec, seed: int) -> list[dict[str, str]]:
    """The rows of one `data.tasks` entry, from the source its domain registered."""
    from metis_core.domains import task_source

    return task_source(spec.source)[1].rows(spec, seed)


def _generated_rows(cfg: DataConfig) -> list[dict[str, str]]:
    rows = []
    for i, spec in enumerate(cfg.tasks):
        try:
            spec_rows = _spec_rows(spec, cfg.seed + 1000 * i)
        except Exception as err:  # generators raise assorted errors for bad knobs or files
            raise DatasetError(
                f"data.tasks[{i}] ({spec.source}: {spec.name or '-'}, {spec.params}): {err}"
            ) from err
        for row in spec_rows:
            rows.append({**row, "difficulty": spec.difficulty or row["difficulty"]})
    return rows


def _answer_text(value: Any, where: str) -> str:
    """A row's answer as text: a non-empty string, or a finite number (JSON and CSV give those)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    got = "empty" if value is None or value == "" else f"{type(value).__name__} {value!r:.80}"
    raise DatasetError(f"{where}: `answer` must be a non-empty string or a number, got {got}")


def _label(row: dict[str, Any], key: str, default: str, where: str) -> str:
    value = row.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a numbered level, e.g. difficulty 3
    if not isinstance(value, str):
        got = f"{type(value).__name__} {value!r:.80}"
        raise DatasetError(f"{where}: `{key}` must be a string (or left empty), got {got}")
    return value


def _file_rows(path: str) -> list[dict[str, str]]:
    file = Path(path)
    table = load_table(file, {"prompt", "answer"}, DatasetError, "data.file")
    rows = []
    for i, row in enumerate(table):
        where = f"data.file {file}, row {i}"
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DatasetError(f"{where}: `prompt` must be a non-empty string, got {prompt!r:.80}")
        rows.append(
            {
                "prompt": prompt,
                "answer": _answer_text(row["answer"], where),
                "task": _label(row, "task", "file", where),
                "difficulty": _label(row, "difficulty", "default", where),
                "metadata": json.dumps({}),
                "domain": "math",
                "reward": "math_verify",
            }
        )
    return rows


def _check_rewards(rows: list[dict[str, str]]) -> None:
    from metis_core.rewards import REWARDS

    for name in sorted({row["reward"] for row in rows} - set(REWARDS)):
        task = next(row["task"] for row in rows if row["reward"] == name)
        raise DatasetError(
            f"task {task!r} is scored by {name!r}, which is no reward function; "
            f"registered: {', '.join(sorted(REWARDS))}"
        )


def build_pool(
    cfg: DataConfig, count_tokens: Callable[[dict[str, Any]], int] | None = None
) -> Dataset:
    """The whole pool, deduplicated by prompt id, with its train/held-out split column.

    With `count_tokens` (a row -> its chat-formatted prompt length), rows longer than
    `data.max_prompt_tokens` are left out and counted in the log.
    """
    rows = _file_rows(cfg.file) if cfg.file else _generated_rows(cfg)
    _check_rewards(rows)
    seen: dict[str, dict[str, str]] = {}
    too_long: dict[str, int] = {}
    for row in rows:
        if count_tokens is not None and count_tokens(row) > cfg.max_prompt_tokens:
            too_long[row["task"]] = too_long.get(row["task"], 0) + 1
            continue
        pid = prompt_id(row["task"], row["prompt"], row["answer"])
        if pid not in seen:
            seen[pid] = {
                "prompt_id": pid,
                **row,
                "split": _split_of(pid, cfg.heldout_fraction, cfg.seed),
            }
    if too_long:
        log.warning(
            "left out prompts longer than data.max_prompt_tokens=%d: %s",
            cfg.max_prompt_tokens,
            ", ".join(f"{t} {n}" for t, n in sorted(too_long.items())),
        )
    if not seen:
        raise DatasetError(
            f"the prompt pool is empty: all {len(rows)} prompts are longer than "
            f"data.max_prompt_tokens={cfg.max_prompt_tokens}; raise it (and model.max_model_len)"
            if rows
            else "the prompt pool is empty"
        )
    pool = Dataset.from_list(list(seen.values()))
    return pool.select_columns(list(COLUMNS))
