"""retain_freed_memory: a large block freed and allocated again comes back without the kernel
mapping (and faulting in) its pages again. Run in a fresh interpreter: the setting is
process-wide."""

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import torch
from metis_core.trainer.allocator import retain_freed_memory

def faults_of_a_fresh_64mib_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)  # 64 MiB, above glibc's largest mmap threshold
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_fresh_64mib_tensor()
default = faults_of_a_fresh_64mib_tensor()
assert retain_freed_memory()
faults_of_a_fresh_64mib_tensor()
retained = faults_of_a_fresh_64mib_tensor()
print(default, retained)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_freed_block_is_reused_without_page_faults():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    default, retained = map(int, done.stdout.split())
    assert default > 10_000  # 16,384 pages of 4 KiB mapped and zeroed again
    assert retained < 100
