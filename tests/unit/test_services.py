"""`metis services`: what it reports and hands to `metis train` when services are down or gone
(the servers themselves run in tests/integration/test_walkthrough.py)."""

import json
import socket

from flows import services
from flows.cli import main
from tests.conftest import free_port


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
        name: {"url": f"http://127.0.0.1:{free_port()}", "pid": 2**22 - 7, "log": "x.log"}
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


def test_prefect_calls_retry_what_prefects_client_retries():
    """503 (a SQLite server's "database is locked") is retried until an answer comes; 409 (a
    limit that exists) is raised at once."""
    import http.server
    import threading
    import urllib.error
    import urllib.request

    import pytest

    answers = [503, 503, 200, 409]
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server name)
            code = answers.pop(0)
            seen.append(code)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"ok": true}' if code == 200 else b"{}")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/x"
        request = urllib.request.Request(url, data=b"{}", method="POST")
        assert json.loads(services.prefect_call(request, timeout=10)) == {"ok": True}
        assert seen == [503, 503, 200]
        with pytest.raises(urllib.error.HTTPError) as caught:
            services.prefect_call(request, timeout=10)
        assert caught.value.code == 409 and seen == [503, 503, 200, 409]
    finally:
        server.shutdown()
