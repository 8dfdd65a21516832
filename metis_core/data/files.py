"""Reading a user's dataset file (json/jsonl/csv/parquet) with the columns a loader needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FILE_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_table(path: str | Path, required: set[str], error: type[ValueError], label: str) -> Any:
    """The file as an HF Dataset; `error(...)` names the file (as `label`) and what is wrong."""
    from datasets import load_dataset

    file = Path(path)
    if not file.is_file():
        raise error(f"{label} not found: {file}")
    loader = FILE_LOADERS.get(file.suffix)
    if loader is None:
        raise error(f"{label} {file}: use one of {sorted(FILE_LOADERS)}")
    try:
        table = load_dataset(loader, data_files=str(file), split="train")
    except Exception as err:  # datasets raises assorted errors for unreadable or mixed-type files
        raise error(f"{label} {file} is unreadable: {err!r:.300}") from err
    if missing := required - set(table.column_names):
        raise error(
            f"{label} {file}: missing column(s) {sorted(missing)}; found {table.column_names}"
        )
    return table
