"""Checks of `data.tasks` entries against what their sources accept: dataset and category names,
generator knobs and their values. Run by `RunConfig`'s validator, so a misspelt task or knob fails
at config load with the valid choices listed, not minutes later when the pool is built.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metis_core.config import TaskSpec


def _unknown(what: str, got: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(got, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown {what} {got!r}{hint}; valid: {', '.join(valid)}"


def _no_params(spec: TaskSpec) -> None:
    if spec.params:
        raise ValueError(f"source {spec.source!r} takes no `params`, got {sorted(spec.params)}")


def _reasoning_gym(spec: TaskSpec) -> None:
    from reasoning_gym.factory import DATASETS

    if spec.name not in DATASETS:
        raise ValueError(_unknown("reasoning-gym dataset", spec.name, DATASETS))
    config_cls = DATASETS[spec.name][1]
    knobs = {f.name for f in dataclasses.fields(config_cls)} - {"seed", "size"}
    if extra := set(spec.params) - knobs:
        raise ValueError(
            f"reasoning-gym dataset {spec.name!r} has no knob(s) {sorted(extra)}; "
            f"valid: {', '.join(sorted(knobs)) or 'none'}"
        )
    try:
        config = config_cls(size=spec.size, seed=0, **spec.params)
        if hasattr(config, "validate"):
            config.validate()
    except Exception as err:  # reasoning-gym validates with asserts and assorted errors
        raise ValueError(
            f"reasoning-gym dataset {spec.name!r} refuses params {spec.params}: "
            f"{err or type(err).__name__}"
        ) from None


def _code(spec: TaskSpec) -> None:
    from metis_core.domains.code import LEVELS

    if extra := set(spec.params) - {"difficulty"}:
        raise ValueError(f"source 'code' has no knob(s) {sorted(extra)}; valid: difficulty")
    level: Any = spec.params.get("difficulty")
    if level not in LEVELS or isinstance(level, bool):
        raise ValueError(
            f"source 'code' needs params.difficulty, one of {sorted(LEVELS)}; got {level!r}"
        )


def _bfcl(spec: TaskSpec) -> None:
    from metis_core.domains.function_calling import _UNSUPPORTED, CATEGORIES

    _no_params(spec)
    if spec.name not in CATEGORIES:
        why = next((f"BFCL category {spec.name!r} {w}" for w, c in _UNSUPPORTED.items()
                    if spec.name in c.split()), None)  # fmt: skip
        if why:
            raise ValueError(f"{why}; supported: {', '.join(CATEGORIES)}")
        raise ValueError(_unknown("BFCL category", spec.name, CATEGORIES))


def check_task(spec: TaskSpec) -> None:
    """Raises ValueError saying what in `spec` its source cannot use, and what it can."""
    if spec.source == "reasoning_gym":
        _reasoning_gym(spec)
    elif spec.source == "code":
        _code(spec)
    elif spec.source == "bfcl":
        _bfcl(spec)
    else:  # code_file (its rows are checked when read), humaneval
        _no_params(spec)


def check_tasks(tasks: Iterable[TaskSpec]) -> None:
    """`check_task` of every entry; the message names the entry (`data.tasks[i]`)."""
    for i, spec in enumerate(tasks):
        try:
            check_task(spec)
        except ValueError as err:
            raise ValueError(
                f"data.tasks[{i}] ({spec.source}: {spec.name or '-'}): {err}"
            ) from None
