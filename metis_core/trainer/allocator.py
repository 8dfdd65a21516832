"""Keep freed memory in the process instead of handing it back to the kernel (glibc on Linux).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free. A CPU update allocates and frees several GB of such tensors a step (logits of
the trained tokens, activations, their gradients), so each step the kernel maps and zeroes the
same memory again: about 550,000 minor page faults and 1.5 s of system time per update on the
default batch (bench/update_step.py, docs/BENCHMARKS.md "The update in bf16"). With mmap off for
heap allocations and no trimming, freed blocks are reused: after the first steps an update
faults a handful of pages. The cost: the process keeps its high-water mark of heap memory.

vLLM and PyTorch suggest preloading tcmalloc or jemalloc for the same reason; this needs no
preload (which must happen before the interpreter starts) and no extra package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Set glibc's allocator to reuse freed memory (no mmap per large block, no trimming).
    Returns whether it applied: False on other platforms or C libraries. Process-wide, and
    idempotent."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if not applied:
        log.warning("glibc mallopt refused; freed memory goes back to the kernel as before")
    return applied
