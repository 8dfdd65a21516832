"""Limits on a sandbox's whole process tree: a cgroup of its own (v1 or v2).

RLIMIT_AS and RLIMIT_NPROC bound each process, so 14 children of 300 MB each hold 4 GB, and a
child that calls setsid() leaves the process group the wall clock kills. A cgroup bounds the
tree's memory and process count together, measures its CPU time, and kills every process in it:
no process can leave a cgroup without privileges the sandbox has dropped.

The group is made inside this process's own cgroup of each controller (so the sandbox stays
inside whatever limits the host already gives metis), and removed afterwards. Where no cgroup
hierarchy is writable (a non-root user without delegation), `TreeLimits.open` returns None and
the sandbox keeps its per-process limits only; `available()` says which it is.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
_V1 = ("memory", "pids", "cpuacct")


def _own_v1(controller: str) -> Path | None:
    """This process's cgroup folder of a v1 controller, if mounted."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            folder = ROOT / controller / path.lstrip("/")
            return folder if folder.is_dir() else None
    return None


def _own_v2() -> Path | None:
    """This process's cgroup folder in a v2 hierarchy that delegates memory and pids."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            for mount in (ROOT, ROOT / "unified"):
                folder = mount / line[3:].lstrip("/")
                controllers = folder / "cgroup.controllers"
                if controllers.is_file() and {"memory", "pids"} <= set(
                    controllers.read_text().split()
                ):
                    return folder
    return None


class TreeLimits:
    """One sandbox run's cgroup(s): create, add the launcher, read CPU time, kill all, remove."""

    def __init__(self, folders: dict[str, Path], version: str) -> None:
        self.folders, self.version = folders, version

    @classmethod
    def open(cls, memory_bytes: int, processes: int) -> TreeLimits | None:
        """A new group bounded to `memory_bytes` (swap included where the kernel counts it) and
        `processes` tasks, or None where this machine gives none."""
        name = f"metis-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        made: dict[str, Path] = {}
        try:
            if (parent := _own_v2()) is not None:
                folder = parent / name
                folder.mkdir()
                made["v2"] = folder
                (folder / "memory.max").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (folder / "memory.swap.max").write_text("0")
                (folder / "pids.max").write_text(str(processes))
                return cls(made, "v2")
            for controller in _V1:
                own = _own_v1(controller)
                if own is None:
                    raise OSError(f"cgroup v1 controller {controller} not mounted")
                (own / name).mkdir()
                made[controller] = own / name
            memory = made["memory"]
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):  # absent without swap accounting
                (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            (made["pids"] / "pids.max").write_text(str(processes))
            return cls(made, "v1")
        except OSError:
            cls(made, "").close()
            return None

    def add(self, pid: int) -> None:
        for path in self.procs_files():
            Path(path).write_text(str(pid))

    def procs_files(self) -> list[str]:
        """The cgroup.procs file of each folder: writing 0 there moves the writer in."""
        return [str(folder / "cgroup.procs") for folder in self.folders.values()]

    def cpu_seconds(self) -> float:
        """CPU time used by every process that ran in the group."""
        with contextlib.suppress(OSError, ValueError):
            if self.version == "v2":
                stat = (self.folders["v2"] / "cpu.stat").read_text().split()
                return int(stat[stat.index("usage_usec") + 1]) / 1e6
            return int((self.folders["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        return 0.0

    def pids(self) -> list[int]:
        folder = next(iter(self.folders.values()), None)
        if folder is None:
            return []
        with contextlib.suppress(OSError):
            return [int(p) for p in (folder / "cgroup.procs").read_text().split()]
        return []

    def kill(self) -> None:
        """SIGKILL every process in the group, until it is empty (forks racing the kill too)."""
        if self.version == "v2":
            with contextlib.suppress(OSError):
                (self.folders["v2"] / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 10
        while (left := self.pids()) and time.monotonic() < deadline:
            if self.version == "v1":  # a fork racing the kill shows up in the next read
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def close(self) -> None:
        """Kill what is left and remove the group(s)."""
        self.kill()
        for folder in self.folders.values():
            for _ in range(100):  # rmdir fails while an exiting task is still counted
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


@functools.cache
def available() -> str | None:
    """ "v1" or "v2" when a sandbox gets a cgroup here, None when it keeps per-process limits."""
    probe = TreeLimits.open(64 * 2**20, 8)
    if probe is None:
        return None
    probe.close()
    return probe.version
