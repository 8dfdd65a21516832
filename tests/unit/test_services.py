"""`metis services`: what it reports and hands to `metis train` when services are down or gone
(the servers themselves run in tests/integration/test_walkthrough.py)."""

import json
import socket

from flows import services
from flows.cli import main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_started_means_the_embedded_default(tmp_path, capsys):
    assert services.status(tmp_path) == {"prefect": "down", "mlflow": "down"}
    assert services.service_environment(tmp_path) == {}
    assert main(["services", "status", "--output-dir", str(tmp_path)]) == 3
    assert "prefect  down" in capsys.readouterr().out
    assert main(["services", "down", "--output-dir", str(tmp_path)]) == 0


def test_services_that_stopped_answering_are_not_used(tmp_path):
    """A services.json left by a machine that rebooted: its URLs answer no more."""
    folder = tmp_path / "services"
    folder.mkdir()
    dead = {
        name: {"url": f"http://127.0.0.1:{_closed_port()}", "pid": 2**22 - 7, "log": "x.log"}
        for name in ("prefect", "mlflow")
    }
    (folder / "services.json").write_text(json.dumps(dead))
    assert services.service_environment(tmp_path) == {}
    found = services.status(tmp_path)
    assert all(v.startswith("not answering") and v.endswith("(exited)") for v in found.values())


def test_a_taken_port_is_replaced_by_a_free_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        other = services._free_port("127.0.0.1", taken)
    assert other != taken and other > 0
