"""Named points where a test kills the process, to prove a run survives a kill there.

`METIS_KILL_AT=<point>@<step>` (e.g. `rollout@1`, `checkpoint-write@2`) makes the process SIGKILL
itself when it reaches that point of that step, as a preemption would. Points: the start of every
stage (`history`, `judge`, `select`, `rollout`, `verify`, `record`, `update`, `sync`, `evaluate`,
`audit`, `log`, `checkpoint`), `record-transaction` (inside the DuckDB transaction that replaces
the step's rows, after its delete), `checkpoint-write` (DeepSpeed's files written, the checkpoint
not yet complete), `mlflow-logged` (the step's metrics in MLflow, its checkpoint not yet
written) and `finished` (at the last step: the run ended in MLflow, its summary in Prefect,
run.json not yet marked finished).
Unset, a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "METIS_KILL_AT"


def failpoint(point: str, step: int) -> None:
    if os.environ.get(ENV) == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
