"""Live runs of this process, by run id.

Engines and trainers cannot travel between Prefect tasks (they are neither small nor
serialisable), so tasks receive a run id and look the live `Run` up here.
"""

from __future__ import annotations

from metis_core.run import Run

_RUNS: dict[str, Run] = {}


def register(run: Run) -> None:
    _RUNS[run.run_id] = run


def live_run(run_id: str) -> Run:
    try:
        return _RUNS[run_id]
    except KeyError:
        raise RuntimeError(
            f"run {run_id!r} is not open in this process; start it with `metis train`"
        ) from None


def release(run_id: str) -> None:
    run = _RUNS.pop(run_id, None)
    if run is not None:
        run.engine.close()
