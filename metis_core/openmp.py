"""OpenMP threads that sleep when idle (OMP_WAIT_POLICY=PASSIVE), set before torch loads its
OpenMP runtime, which reads the variable once, when it is loaded.

By default an idle OpenMP thread spins before sleeping, so each parallel region's end is a busy
wait. On the 2-core CPU default the training process's two OpenMP threads share the cores with
Prefect's server, MLflow, the reward workers and, on a shared machine, other jobs: a spinning
thread burns a core another thread needs, and a region waits for its descheduled partner. The
update then ran 3-10x slower than the same update alone, from step to step unpredictably, and
its CPU time was mostly spinning (docs/BENCHMARKS.md, "The update in bf16"). bf16 regions are
shorter, so they suffered most. An explicit OMP_WAIT_POLICY (e.g. ACTIVE on a dedicated
machine) is left as it is.
"""

from __future__ import annotations

import os
import sys


def passive_openmp() -> bool:
    """Default OMP_WAIT_POLICY to PASSIVE for this process and its children. Returns False when
    torch was imported already: then only child processes see it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules
