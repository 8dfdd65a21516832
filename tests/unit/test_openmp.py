"""`metis` sets OMP_WAIT_POLICY=PASSIVE before torch loads its OpenMP runtime (which reads it
once, at load), and leaves an explicit setting alone."""

import os
import subprocess
import sys

# Records the policy in the environment at the moment torch is first imported.
SCRIPT = """
import importlib.abc, os, sys
seen = []

class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY", "unset"))

sys.meta_path.insert(0, Spy())
from flows.cli import main
main(["config"])
print(seen[0] if seen else "torch-not-imported")
"""


def policy_when_torch_loads(env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.split()[-1]


def test_metis_defaults_openmp_threads_to_sleep_when_idle():
    assert policy_when_torch_loads(None) == "PASSIVE"


def test_an_explicit_wait_policy_is_kept():
    assert policy_when_torch_loads("ACTIVE") == "ACTIVE"
