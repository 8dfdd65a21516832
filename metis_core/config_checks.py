"""Checks of `data.tasks` entries against what their sources accept: dataset and category names,
generator knobs and their values (each source declares its check, metis_core/domains/). Run by
`RunConfig`'s validator, so a misspelt task or knob fails at config load with the valid choices
listed, not minutes later when the pool is built.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metis_core.config import TaskSpec


def unknown_name(what: str, got: str, valid: Iterable[str]) -> str:
    """`unknown <what> <got> (did you mean ...?); valid: ...`"""
    valid = sorted(valid)
    close = difflib.get_close_matches(got, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown {what} {got!r}{hint}; valid: {', '.join(valid)}"


def check_task(spec: TaskSpec) -> None:
    """Raises ValueError saying what in `spec` its source cannot use, and what it can (each
    source's own `check`, declared by its domain)."""
    from metis_core.domains import task_source

    task_source(spec.source)[1].check(spec)


def check_tasks(tasks: Iterable[TaskSpec]) -> None:
    """`check_task` of every entry; the message names the entry (`data.tasks[i]`)."""
    for i, spec in enumerate(tasks):
        try:
            check_task(spec)
        except ValueError as err:
            raise ValueError(
                f"data.tasks[{i}] ({spec.source}: {spec.name or '-'}): {err}"
            ) from None
