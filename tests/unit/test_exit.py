"""`metis` ends without the interpreter's finalization (flows.process.exit_quickly), but only after
everything a normal exit does first: thread pools stopped, non-daemon threads joined, atexit
handlers run, output flushed, and the exit code kept."""

import os
import subprocess
import sys

from tests.conftest import REPO

PROGRAM = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from flows.process import exit_quickly

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))

def late_writer():
    time.sleep(0.5)
    (out / "thread").write_text("joined")

threading.Thread(target=late_writer).start()
pool = ThreadPoolExecutor(1)  # an idle worker waits for work until told to stop
pool.submit(print, "", end="").result()
print("unflushed", end="")
exit_quickly(3)
print("never reached")
"""


def test_exit_quickly_does_what_a_normal_exit_does_first(tmp_path):
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe buffers
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path)],
        cwd=REPO, env=buffered, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout == "unflushed"
    assert (tmp_path / "thread").read_text() == "joined"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_the_metis_command_keeps_its_exit_code_and_output():
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "config", "--set", "steps=0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "steps" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "config", "--set", "steps=3"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"steps": 3' in done.stdout
