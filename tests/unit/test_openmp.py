"""`metis` chooses the OpenMP runtime before torch loads one (metis_core/openmp.py): Intel's,
bound ahead of torch's libgomp, where the intel-openmp package is installed; GNU's sleeping when
idle otherwise or when asked; a wait policy the user set is kept."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metis_core.openmp import intel_runtime_library

REPO = Path(__file__).resolve().parents[2]

# Records the environment at the moment torch is first imported, then which library the
# process's global symbol scope (where torch's OpenMP calls are looked up first) takes
# GOMP_parallel from.
SCRIPT = """
import ctypes, ctypes.util, importlib.abc, json, os, sys
seen = {}

class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            maps = open("/proc/self/maps").read()
            seen.update({k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "LD_PRELOAD")})
            seen["intel_mapped"] = "libiomp5" in maps

sys.meta_path.insert(0, Spy())
ENTRY
import torch
torch.ones(1 << 20).sum()

class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]

libdl = ctypes.CDLL(ctypes.util.find_library("dl") or "libc.so.6")
address = ctypes.cast(ctypes.CDLL(None).GOMP_parallel, ctypes.c_void_p)
info = DlInfo()
libdl.dladdr(address, ctypes.byref(info))
seen["GOMP_parallel_from"] = os.path.basename(info.fname.decode())
print(json.dumps(seen))
"""


# how a process comes to metis: the command line, or a deployment's flow run (Prefect's worker
# loads the flow from its entrypoint in prefect.yaml)
ENTRIES = {
    "metis": 'from flows.cli import main\nmain(["config"])',
    "deployment": "from prefect.flows import load_flow_from_entrypoint\n"
    'load_flow_from_entrypoint("flows/train.py:train")',
}


def when_torch_loads(entry: str = "metis", **env_vars: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "LD_PRELOAD", "METIS_OPENMP")
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("ENTRY", ENTRIES[entry])],
        cwd=REPO,  # the deployment's entrypoint path is relative to it
        env=env | env_vars,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(intel_runtime_library() is None, reason="intel-openmp is not installed")
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_metis_binds_torch_to_intels_runtime_where_it_is_installed(entry):
    seen = when_torch_loads(entry)
    assert seen["intel_mapped"]  # loaded before torch
    assert seen["GOMP_parallel_from"].startswith("libiomp5")  # ahead of torch's libgomp
    assert seen["KMP_BLOCKTIME"] == "1"
    assert seen["OMP_WAIT_POLICY"] is None
    # the processes metis starts (trainer ranks, a separate engine) get it too
    assert seen["LD_PRELOAD"].split(":")[0] == str(intel_runtime_library())


def test_gnu_runtime_sleeps_when_idle_where_asked():
    seen = when_torch_loads(METIS_OPENMP="gnu")
    assert not seen["intel_mapped"]
    assert seen["GOMP_parallel_from"].startswith("libgomp")
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE"
    assert seen["LD_PRELOAD"] is None


def test_an_explicit_wait_policy_is_kept():
    seen = when_torch_loads(OMP_WAIT_POLICY="ACTIVE")
    assert seen["OMP_WAIT_POLICY"] == "ACTIVE"
    assert seen["KMP_BLOCKTIME"] is None  # the user's policy decides the spinning


@pytest.mark.skipif(intel_runtime_library() is None, reason="intel-openmp is not installed")
def test_a_process_metis_starts_keeps_the_runtime_it_was_given():
    seen = when_torch_loads(LD_PRELOAD=str(intel_runtime_library()), KMP_BLOCKTIME="1")
    assert seen["GOMP_parallel_from"].startswith("libiomp5")
    assert seen["LD_PRELOAD"] == str(intel_runtime_library())  # not named twice


def test_a_runtime_ld_preload_names_is_kept():
    import torch

    (gomp,) = Path(torch.__path__[0], "lib").glob("libgomp*.so*")  # torch's own
    seen = when_torch_loads(LD_PRELOAD=str(gomp))
    assert not seen["intel_mapped"]
    assert seen["GOMP_parallel_from"].startswith("libgomp")
    assert seen["LD_PRELOAD"] == str(gomp)
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE"


def test_an_unknown_runtime_name_is_refused():
    env = {k: v for k, v in os.environ.items() if k != "METIS_OPENMP"}
    done = subprocess.run(
        [sys.executable, "-c", "import flows"],
        env=env | {"METIS_OPENMP": "llvm"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "METIS_OPENMP='llvm': use auto, intel or gnu" in done.stderr
