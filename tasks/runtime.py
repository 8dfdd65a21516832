"""What this process holds live for its Prefect tasks: training runs and evaluations, by id.

Engines and trainers cannot travel between Prefect tasks (they are neither small nor
serialisable), so tasks receive an id (a run id, an evaluation id) and look the live object up
here; `release` closes its engine (and a run's trainer: its ranks, when it has a group).
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from metis_core.ports import Engine
from metis_core.run import Run


class _Live(Protocol):
    engine: Engine


T = TypeVar("T", bound=_Live)
_LIVE: dict[str, _Live] = {}


def register(key: str, live: _Live) -> None:
    """`live` (a Run, an Evaluation) is open in this process under `key`."""
    _LIVE[key] = live


def lookup(key: str, kind: type[T]) -> T:
    """The open `kind` under `key`; RuntimeError saying how to open one otherwise."""
    live = _LIVE.get(key)
    if not isinstance(live, kind):
        raise RuntimeError(
            f"no {kind.__name__} {key!r} is open in this process; start it with "
            + ("`metis train`" if kind is Run else "`metis eval`")
        )
    return live


def live_run(run_id: str) -> Run:
    return lookup(run_id, Run)


def release(key: str) -> None:
    """Forget what is open under `key` and close its engine and, for a run, its trainer (a no-op
    when nothing is open)."""
    live = _LIVE.pop(key, None)
    if live is None:
        return
    try:
        live.engine.close()
    finally:
        if isinstance(live, Run):
            live.trainer.close()
