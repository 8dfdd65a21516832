"""The prompt pool: reasoning-gym generators (or any `datasets`-loadable file) -> HF Dataset.

Every row: prompt_id (a hash of task + prompt + answer, stable across runs and machines), prompt,
answer, task, difficulty, metadata (JSON), split ("train" or "heldout"). The held-out split is
chosen by the prompt id's hash, so it stays disjoint and stable when the pool grows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datasets import Dataset, load_dataset

from metis_core.config import DataConfig

COLUMNS = ("prompt_id", "prompt", "answer", "task", "difficulty", "metadata", "split")
_FILE_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class DatasetError(ValueError):
    """A dataset file or row the pool cannot use; the message names the row and the fix."""


def prompt_id(task: str, prompt: str, answer: str) -> str:
    return hashlib.sha1(f"{task}\x1f{prompt}\x1f{answer}".encode()).hexdigest()[:16]


def _split_of(pid: str, heldout_fraction: float, seed: int) -> str:
    h = int(hashlib.sha1(f"{seed}:{pid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_fraction else "train"


def _generated_rows(cfg: DataConfig) -> list[dict[str, str]]:
    import reasoning_gym

    rows = []
    for i, spec in enumerate(cfg.tasks):
        try:
            generator = reasoning_gym.create_dataset(
                spec.name, size=spec.size, seed=cfg.seed + 1000 * i, **spec.params
            )
        except Exception as err:  # reasoning-gym raises assorted errors for bad knobs
            raise DatasetError(f"data.tasks[{i}] ({spec.name}, {spec.params}): {err}") from err
        for entry in generator:
            meta = dict(entry.get("metadata", {}))
            meta.setdefault("source_dataset", spec.name)
            rows.append(
                {
                    "prompt": entry["question"],
                    "answer": str(entry["answer"]),
                    "task": spec.name,
                    "difficulty": spec.difficulty,
                    "metadata": json.dumps(meta, default=str),
                }
            )
    return rows


def _file_rows(path: str) -> list[dict[str, str]]:
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"data.file not found: {file}")
    loader = _FILE_LOADERS.get(file.suffix)
    if loader is None:
        raise DatasetError(f"data.file {file}: use one of {sorted(_FILE_LOADERS)}")
    table = load_dataset(loader, data_files=str(file), split="train")
    missing = {"prompt", "answer"} - set(table.column_names)
    if missing:
        raise DatasetError(
            f"data.file {file}: missing column(s) {sorted(missing)}; found {table.column_names}"
        )
    rows = []
    for i, row in enumerate(table):
        prompt, answer = row["prompt"], row["answer"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DatasetError(
                f"data.file {file}, row {i}: `prompt` must be a non-empty string, got {prompt!r}"
            )
        if answer is None or str(answer).strip() == "":
            raise DatasetError(f"data.file {file}, row {i}: `answer` is empty")
        rows.append(
            {
                "prompt": prompt,
                "answer": str(answer),
                "task": str(row.get("task") or "file"),
                "difficulty": str(row.get("difficulty") or "default"),
                "metadata": json.dumps({}),
            }
        )
    return rows


def build_pool(cfg: DataConfig) -> Dataset:
    """The whole pool, deduplicated by prompt id, with its train/held-out split column."""
    rows = _file_rows(cfg.file) if cfg.file else _generated_rows(cfg)
    seen: dict[str, dict[str, str]] = {}
    for row in rows:
        pid = prompt_id(row["task"], row["prompt"], row["answer"])
        if pid not in seen:
            seen[pid] = {
                "prompt_id": pid,
                **row,
                "split": _split_of(pid, cfg.heldout_fraction, cfg.seed),
            }
    pool = Dataset.from_list(list(seen.values()))
    if pool.num_rows == 0:
        raise DatasetError("the prompt pool is empty")
    return pool.select_columns(list(COLUMNS))
