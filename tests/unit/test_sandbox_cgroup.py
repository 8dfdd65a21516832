"""A sandbox's process tree in a cgroup: memory and process count bounded for the whole tree, and
a kill that reaches processes which left the process group (setsid)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metis_core.sandbox_cgroup import TreeLimits, available

pytestmark = [
    pytest.mark.skipif(available() is None, reason="no writable cgroup hierarchy here"),
    pytest.mark.serial,  # its CPU-time and memory bounds are measured on a machine left to it
]

HOG = """
import os, time
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(100 * 2**20)  # 100 MB each, touched
        for i in range(0, len(block), 4096): block[i] = 1
        time.sleep(30); os._exit(0)
    kids.append(pid)
for pid in kids: os.waitpid(pid, 0)
"""


def start_in(tree: TreeLimits, code: str) -> subprocess.Popen:
    """Run `code` in `tree`: the child waits on stdin until it is in the group, as the sandbox
    launcher does, so nothing it forks is outside."""
    gate = "import sys; sys.stdin.read(1)\n"
    proc = subprocess.Popen([sys.executable, "-c", gate + code], stdin=subprocess.PIPE)
    tree.add(proc.pid)
    proc.stdin.write(b"x")
    proc.stdin.close()
    return proc


def test_memory_is_bounded_for_the_whole_tree():
    tree = TreeLimits.open(memory_bytes=256 * 2**20, processes=32)
    try:
        proc = start_in(tree, HOG)
        time.sleep(5)  # six 100 MB children cannot all live in 256 MB
        assert len(tree.pids()) < 7
    finally:
        tree.close()
    assert tree.pids() == [] and proc.wait(timeout=10) is not None


def test_process_count_is_bounded_and_setsid_does_not_escape_the_kill():
    code = """
import os, time
for _ in range(20):
    try:
        if os.fork() == 0:
            os.setsid(); time.sleep(60); os._exit(0)
    except OSError:
        break
time.sleep(60)
"""
    tree = TreeLimits.open(memory_bytes=512 * 2**20, processes=5)
    try:
        proc = start_in(tree, code)
        time.sleep(3)
        assert 1 < len(tree.pids()) <= 5
        survivors = tree.pids()
    finally:
        tree.close()
    assert tree.pids() == []
    for pid in survivors:  # every process is gone, the setsid()ed ones included
        assert not _alive(pid)
    proc.wait(timeout=10)


def test_cpu_time_of_the_tree_is_measured():
    tree = TreeLimits.open(memory_bytes=256 * 2**20, processes=8)
    try:
        proc = start_in(
            tree,
            "import os, time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass\n",
        )
        proc.wait(timeout=30)
        assert tree.cpu_seconds() >= 0.9
    finally:
        tree.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


SPIN = """
import os, time
def spin(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds: pass
for _ in range(4):
    if os.fork() == 0:
        spin(1.5); os._exit(0)
spin(1.5)
"""

HOGS = """
import os, time
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096): block[i] = 1
        time.sleep(3); os._exit(0)
    kids.append(pid)
print("killed", sum(os.WIFSIGNALED(os.waitpid(p, 0)[1]) for p in kids))
"""


def test_the_sandbox_bounds_the_whole_tree():
    """(The rlimits fallback refuses fork outright, so only namespaces mode has a tree.)"""
    from metis_core.sandbox import SandboxLimits, isolation, run_tests

    if isolation() != "namespaces":
        pytest.skip("no namespaces here")
    limits = SandboxLimits(cpu_seconds=2, memory_bytes=400 * 2**20, wall_seconds=30)
    # five processes of 1.5 s CPU each: each under its own 2 s limit, 7.5 s together
    spun = run_tests(SPIN, ["assert True"], limits, mode="namespaces")
    assert spun.passed == [False]
    assert spun.reason == "killed: CPU time limit of the process tree (2 s)"
    # six children of 300 MB, each under its own 400 MB: 1.8 GB together, over the tree's 1 GiB.
    # Memory is what this bounds, not CPU: faulting 1.8 GB in under the tree's limit took the
    # tree past 2 s of CPU once on a loaded 2-core machine, so the CPU limit is out of its way
    hogs = SandboxLimits(cpu_seconds=20, memory_bytes=400 * 2**20, wall_seconds=30)
    hogged = run_tests(HOGS, ["assert True"], hogs, mode="namespaces")
    assert hogged.passed == [True], hogged.reason
    assert int(hogged.stdout.split()[-1]) >= 3  # at most 3 x 300 MB fit: the rest were killed
    assert not _sandbox_processes()


def _sandbox_processes() -> list[int]:
    """Live processes still in a sandbox cgroup made by this test process (after 5 s of grace)."""
    tag = f"metis-sandbox-{os.getpid()}-"
    deadline = time.monotonic() + 5
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                groups = Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue
            if tag in groups and _alive(int(pid)):
                found.append(int(pid))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
