"""`metis services up --database postgres`: Prefect's server on a PostgreSQL cluster that the
command initialises and starts itself; `down` stops all three. (The SQLite default, with
deployments and a worker, is tests/integration/test_walkthrough.py.)"""

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from flows import services
from tests.conftest import REPO

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("initdb"), reason="PostgreSQL's initdb is not installed"),
]


def _pids_alive(*pids: int) -> list[int]:
    return [
        p
        for p in pids
        if Path(f"/proc/{p}").exists()
        and b"Z" not in Path(f"/proc/{p}/stat").read_bytes().split()[2]
    ]


def test_prefect_on_postgres(tmp_path):
    out = tmp_path / "runs"
    try:
        state = services.up(out, prefect_port=0, mlflow_port=0, database="postgres")
        db = state["prefect"]["database"]
        assert db.startswith("postgresql+asyncpg://")
        api = f"{state['prefect']['url']}/api"
        request = urllib.request.Request(
            f"{api}/work_pools/", data=json.dumps({"name": "pg-pool", "type": "process"}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(request, timeout=30).close()
        host_port = db.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.split(":")
        rows = subprocess.run(
            ["psql", "-h", host, "-p", port, "-U", "prefect", "-At", "-c", "select name from work_pool", "postgres"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert "pg-pool" in rows  # the server's data is in PostgreSQL
        status = subprocess.run(
            [sys.executable, "-m", "flows.cli", "services", "status", "--output-dir", str(out)],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        assert status.returncode == 0 and f"export PREFECT_API_URL={api}" in status.stdout
    finally:
        services.down(out)
        cluster = (out / "services" / "postgres").resolve()
        if cluster != (out / "services" / "postgres"):  # root: the cluster lived in /var/tmp
            shutil.rmtree(cluster, ignore_errors=True)
    pids = [state["prefect"]["pid"], state["mlflow"]["pid"], state["prefect"]["database_pid"]]
    assert _pids_alive(*pids) == []
    assert services.status(out) == {"prefect": "down", "mlflow": "down"}
