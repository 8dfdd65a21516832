"""Prefect's temporary server is started early, beside the imports (flows.process.
start_temporary_server): the flow then runs on that same server, no second one starts, and no
server outlives the process, even one that exits before the server answered; none starts where
Prefect would not start one, and where that is a server named by a Prefect profile, a training
run takes the machine's slot there as it does on a server named by the environment."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

FLOW = """
import json, sys
from flows.process import exit_quickly, prefect_environment, start_temporary_server

prefect_environment(sys.argv[1])
ready = start_temporary_server()
from prefect import flow
from prefect.server.api.server import SubprocessASGIServer

ready()
started = SubprocessASGIServer().server_process.pid

@flow
def answer() -> int:
    return 42

value = answer()
print(json.dumps({"value": value, "started": started,
                  "servers": [s.server_process.pid for s in SubprocessASGIServer._instances.values()]}))
exit_quickly(0)
"""

EARLY_EXIT = """
import sys
from flows.process import prefect_environment, start_temporary_server

prefect_environment(sys.argv[1])
start_temporary_server()
sys.exit(5)
"""

NOT_STARTED = """
import json, sys
from flows.process import prefect_environment, start_temporary_server

prefect_environment(sys.argv[1])
start_temporary_server()()
from prefect.server.api.server import SubprocessASGIServer
from flows.train import _machine_slot

print(json.dumps([len(SubprocessASGIServer._instances), type(_machine_slot()).__name__]))
"""


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return dict(env, PYTHONUNBUFFERED="1")


def _processes_under(folder: Path) -> list[int]:
    """Live processes whose environment names `folder` (a temporary server started for it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder).encode() in environ and state != "Z":
            found.append(int(proc.name))
    return found


def test_a_flow_runs_on_the_server_started_early_and_it_stops_at_exit(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", FLOW, str(tmp_path)],
        cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["value"] == 42
    assert result["servers"] == [result["started"]]  # the flow's client found the same server
    time.sleep(1)
    assert _processes_under(tmp_path) == []


def test_no_server_outlives_a_process_that_exits_before_it_answered(tmp_path):
    # (the server's process is started at once, beside the exit: a later exit is the same case)
    done = subprocess.run(
        [sys.executable, "-c", EARLY_EXIT, str(tmp_path)],
        cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 5, done.stderr[-3000:]
    time.sleep(1)
    assert _processes_under(tmp_path) == []


@pytest.mark.parametrize("where", ["profile", "no temporary server"])
def test_none_starts_where_prefect_would_not_start_one(tmp_path, where):
    env = _environment()
    if where == "profile":  # `prefect config set PREFECT_API_URL=...`: a real server, by profile
        (tmp_path / ".prefect").mkdir()
        (tmp_path / ".prefect" / "profiles.toml").write_text(
            'active = "remote"\n[profiles.remote]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
        )
    else:
        env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    done = subprocess.run(
        [sys.executable, "-c", NOT_STARTED, str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    servers, slot = json.loads(done.stdout.strip().splitlines()[-1])
    assert servers == 0
    # a run on the profile's server takes the machine's slot (its global concurrency limit)
    assert slot == ("nullcontext" if where == "no temporary server" else "_GeneratorContextManager")
    assert _processes_under(tmp_path) == []
