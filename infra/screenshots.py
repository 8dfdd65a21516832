"""Screenshots of a run as a person sees it: the MLflow run's charts, its registered model, the
Prefect flow run with its iterations (nested flow runs), and the last iteration's stage tasks.

Drives the system's headless Chromium (Debian's `chromium`) over the DevTools protocol: opens
each page, waits until the page's text holds what it must show and the page has stopped
changing (its charts drawn), and writes PAGE.png plus PAGE.txt (the page's visible text, which
the tests check):

    .venv/bin/python infra/screenshots.py --run-dir runs/<run id> --out docs/images

The run's MLflow run, experiment and registered model come from its run.json; the servers from
`metis services` of the run's output folder (or --mlflow / --prefect).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # flows.services, run as a script

FLAGS = [  # what this machine's closed network needs (no background fetches, no QUIC)
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-port=0",
]  # fmt: skip


class Browser:
    """One headless Chromium and a DevTools connection to its page."""

    def __init__(self, width: int = 1500, height: int = 950) -> None:
        from websockets.sync.client import connect

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("screenshots need Chromium: apt-get install chromium")
        self.profile = tempfile.mkdtemp(prefix="metis-chromium-")
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("Chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.next_id = 0
        self.call("Emulation.setDeviceMetricsOverride",
                  width=width, height=height, deviceScaleFactor=1, mobile=False)  # fmt: skip

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def text(self) -> str:
        js = "document.body ? document.body.innerText : ''"
        found = self.call("Runtime.evaluate", expression=js, returnByValue=True)
        return str(found.get("result", {}).get("value") or "")

    def click(self, label: str) -> bool:
        """Click, as a mouse would, the innermost visible element whose text is `label` (a tab,
        a toggle); True if there was one."""
        js = (
            "(() => { const e = [...document.querySelectorAll('button, a, li, [role=tab], span, div')]"
            f".filter(x => x.innerText && x.innerText.trim() === {json.dumps(label)}"
            " && x.getBoundingClientRect().width > 0).pop();"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2] })()"
        )
        found = self.call("Runtime.evaluate", expression=js, returnByValue=True)
        point = found.get("result", {}).get("value")
        if not point:
            return False
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=point[0], y=point[1],
                      button="left", clickCount=1)  # fmt: skip
        return True

    def type_into(self, placeholder: str, text: str) -> bool:
        """Type `text` into the input with this placeholder; True if there is one."""
        js = f"(() => {{ const e = document.querySelector('input[placeholder={json.dumps(placeholder)}]');"
        # no blinking caret: the page must be able to look the same twice in a row (`settled`)
        js += " if (e) { e.style.caretColor = 'transparent'; e.focus(); return true } return false })()"
        found = self.call("Runtime.evaluate", expression=js, returnByValue=True)
        if found.get("result", {}).get("value"):
            self.call("Input.insertText", text=text)
            return True
        return False

    def screenshot(self) -> str | None:
        """The page as a base64 PNG; None between two documents of a navigation."""
        try:
            return str(self.call("Page.captureScreenshot", format="png")["data"])
        except RuntimeError:  # "Not attached to an active page"
            return None

    def settled(self, longest: float = 15.0) -> str | None:
        """Wait until the page looks the same for a second (drawn, its charts' data loaded and
        animated in), at most `longest` seconds; its screenshot."""
        shots, deadline = [self.screenshot()], time.monotonic() + longest
        while time.monotonic() < deadline:
            last = shots[-3:]
            if len(last) == 3 and last[0] is not None and len(set(last)) == 1:
                break
            time.sleep(0.5)
            shots.append(self.screenshot())
        return shots[-1]

    def shoot(
        self, url: str, must_show: list[str], out: Path, before: list[tuple[str, str]] = ()
    ) -> str:  # fmt: skip
        """Open `url`, do `before` ("click", label) / ("type", placeholder=text) / ("goto", url)
        steps, each once the page has settled, wait (up to 90 s) until its text holds every
        string of `must_show` and the page has settled again, write out.png and out.txt; the
        text."""
        self.call("Page.navigate", url=url)
        self.settled()
        for action, arg in before:
            if action == "goto":
                self.call("Page.navigate", url=arg)
            else:
                deadline = time.monotonic() + 30  # the page may still be loading
                while not (
                    self.click(arg) if action == "click" else self.type_into(*arg.split("=", 1))
                ):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.25)
            self.settled()
        deadline, text = time.monotonic() + 90, ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(s in text for s in must_show):
                break
            time.sleep(0.5)
        png = self.settled() or self.call("Page.captureScreenshot", format="png")["data"]
        text = self.text()
        out.with_suffix(".png").write_bytes(base64.b64decode(png))
        out.with_suffix(".txt").write_text(text)
        missing = [s for s in must_show if s not in text]
        if missing:
            print(f"warning: {out.name}: the page does not show {missing}")
        return text

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


def _flow_runs(prefect: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    from flows.services import prefect_call

    request = urllib.request.Request(
        f"{prefect}/api/flow_runs/filter", method="POST", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    return json.loads(prefect_call(request))


def pages(run_dir: Path, mlflow: str, prefect: str) -> list[tuple[str, str, list[str], list]]:
    """(file name, URL, text it must show, steps before the shot) for the run's four pages."""
    from mlflow.tracking import MlflowClient

    info = json.loads((run_dir / "run.json").read_text())
    run = MlflowClient(mlflow).get_run(info["mlflow_run_id"])
    exp, name = run.info.experiment_id, run_dir.name
    flow_runs = _flow_runs(prefect, {"flows": {"name": {"any_": ["metis-train"]}}})
    mine = [f for f in flow_runs if name.endswith(f["id"][:4]) or f["name"] in name]
    flow_run = (mine or flow_runs)[0]["id"]
    iterations = _flow_runs(
        prefect, {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run]}}}
    )  # the last step's (it checkpoints), of the attempt that completed it
    last = max((i for i in iterations if i["state_type"] == "COMPLETED"), key=lambda i: i["name"])
    run_page = f"{mlflow}/#/experiments/{exp}/runs/{run.info.run_id}/model-metrics"
    charts = "^(train/reward_mean|eval/avg_at_[0-9]+)$"
    return [
        # MLflow 3 opens in its GenAI workspace: switch to "Model training" first (it persists)
        ("mlflow-run-charts", run_page, ["train/reward_mean", "eval/avg_at"],
         [("click", "Model training"), ("goto", run_page),
          ("type", f"Search metric charts={charts}")]),
        ("mlflow-registered-model", f"{mlflow}/#/models/{name}", [name, "best"], []),
        ("prefect-flow-run", f"{prefect}/runs/flow-run/{flow_run}", [last["name"]],
         [("click", "Subflow Runs")]),
        ("prefect-iteration", f"{prefect}/runs/flow-run/{last['id']}", ["rollout", "checkpoint"],
         [("click", "Task Runs")]),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="the training run's folder")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--mlflow", default=None, help="MLflow server URL (default: services)")
    parser.add_argument("--prefect", default=None, help="Prefect server URL (default: services)")
    args = parser.parse_args()
    state_file = args.run_dir.resolve().parent / "services" / "services.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    mlflow = args.mlflow or state.get("mlflow", {}).get("url")
    prefect = args.prefect or state.get("prefect", {}).get("url")
    if not mlflow or not prefect:
        raise SystemExit("no MLflow/Prefect server: start them (metis services up) or pass URLs")
    args.out.mkdir(parents=True, exist_ok=True)
    browser = Browser()
    try:
        for file, url, must_show, before in pages(args.run_dir.resolve(), mlflow, prefect):
            browser.shoot(url, must_show, args.out / file, before=before)
            print(f"{args.out / file}.png  <- {url}")
    finally:
        browser.close()


if __name__ == "__main__":
    main()
