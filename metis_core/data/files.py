"""Reading a user's dataset file (json/jsonl/csv/parquet) with the columns a loader needs.

A file that cannot be used fails here, before anything is built from it, with an `error(...)`
that names the file, where in it the problem is, and what to do: not UTF-8 (the line and byte),
empty, no rows, malformed (the parser's own words), or a required column missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FILE_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _check_utf8(file: Path, error: type[ValueError], label: str) -> None:
    with file.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise error(
                    f"{label} {file}, line {number}: byte {line[err.start : err.start + 1]!r} at "
                    f"column {err.start + 1} is not UTF-8; save the file as UTF-8 (e.g. "
                    f"`iconv -f latin1 -t utf-8`)"
                ) from None


def _causes(err: BaseException) -> str:
    """The parser's own words: the chain of errors under datasets' generic one."""
    chain = [err]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(inner)
    return "; ".join(f"{type(e).__name__}: {e}" for e in chain[1:] or chain)


def load_table(path: str | Path, required: set[str], error: type[ValueError], label: str) -> Any:
    """The file as an HF Dataset; `error(...)` names the file (as `label`) and what is wrong."""
    from datasets import load_dataset

    file = Path(path)
    if not file.is_file():
        raise error(f"{label} not found: {file}")
    loader = FILE_LOADERS.get(file.suffix)
    if loader is None:
        raise error(f"{label} {file}: use one of {sorted(FILE_LOADERS)}")
    if file.stat().st_size == 0:
        raise error(f"{label} {file} is empty; it needs rows with columns {sorted(required)}")
    if loader != "parquet":  # checked before the datasets cache stores undecodable strings
        _check_utf8(file, error, label)
    try:
        table = load_dataset(loader, data_files=str(file), split="train")
    except Exception as err:  # datasets raises assorted errors for unreadable or mixed-type files
        if "corresponds to no data" in str(err):  # a header, `[]` or blank lines only
            raise error(f"{label} {file} has no rows") from err
        raise error(
            f"{label} {file} is unreadable: {_causes(err)}"[:500]
            + f"; check that it is valid {file.suffix[1:]} with columns {sorted(required)}"
        ) from err
    if missing := required - set(table.column_names):
        raise error(
            f"{label} {file}: missing column(s) {sorted(missing)}; found {table.column_names}"
        )
    if table.num_rows == 0:
        raise error(f"{label} {file} has no rows")
    return table
