"""A sandbox's process tree in a cgroup: memory and process count bounded for the whole tree, and
a kill that reaches processes which left the process group (setsid)."""

import subprocess
import sys
import time

import pytest

from metis_core.sandbox_cgroup import TreeLimits, available

pytestmark = pytest.mark.skipif(available() is None, reason="no writable cgroup hierarchy here")

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


def start(code: str) -> subprocess.Popen:
    # stdin first: the child waits until it is in the group, as the sandbox launcher does
    gate = "import sys; sys.stdin.read(1)\n"
    return subprocess.Popen([sys.executable, "-c", gate + code], stdin=subprocess.PIPE)


def test_memory_is_bounded_for_the_whole_tree():
    tree = TreeLimits.open(memory_bytes=256 * 2**20, processes=32)
    try:
        proc = start(HOG)
        tree.add(proc.pid)
        proc.stdin.write(b"x")
        proc.stdin.close()
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
        proc = start(code)
        tree.add(proc.pid)
        proc.stdin.write(b"x")
        proc.stdin.close()
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
        proc = start(
            "import os, time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass\n"
        )
        tree.add(proc.pid)
        proc.stdin.write(b"x")
        proc.stdin.close()
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
