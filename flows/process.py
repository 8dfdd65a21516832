"""The `metis` process's surroundings: Prefect's environment, set before Prefect is imported,
its temporary server, started beside the imports, and a quick exit once a command has finished."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path


def prefect_environment(output_dir: str) -> None:
    """Prefect's home, storage and settings under `output_dir`, unless the environment sets them."""
    home = Path(output_dir).resolve() / ".prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    # Prefect 3.7 ignores PREFECT_HOME for these two: set them explicitly.
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "storage"))
    os.environ.setdefault("PREFECT_MEMO_STORE_PATH", str(home / "memo_store.toml"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server migrates a fresh sqlite database on first start; on a busy 2-core
    # machine that can outlast Prefect's default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")


def on_prefect_server() -> bool:
    """Whether Prefect talks to a server of its own (PREFECT_API_URL, set in the environment or
    in the active Prefect profile) rather than a temporary one it starts."""
    if os.environ.get("PREFECT_API_URL"):  # before importing Prefect: it need not be, then
        return True
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def start_temporary_server() -> Callable[[], None]:
    """Start Prefect's temporary server now, in the background, and return `ready`, which waits
    until it answers. Call it after `prefect_environment`, go on with the imports, and call
    `ready()` before the first flow: the server's process starts (its imports, its database)
    on the other core while this one imports torch, vLLM and the flows, instead of after them.
    Nothing starts where Prefect would not start one: PREFECT_API_URL set (a real server), in
    the environment or in the active Prefect profile, or the temporary server turned off
    (PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false). If the start fails, `ready()` returns all the
    same and Prefect starts the server itself at the first flow, raising what it raises there."""
    if on_prefect_server():
        return lambda: None
    from prefect.settings import PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return lambda: None
    # Imported here, not in the thread: two threads importing at once can each be handed the
    # other's half-initialised module. Prefect's client imports it at the first flow anyway.
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's client finds (no PREFECT_API_URL)

    def start() -> None:
        with contextlib.suppress(Exception):  # retried, and reported, by Prefect at the first flow
            server.start()

    # not a daemon: an exit before `ready()` still waits until the server answers and its stop at
    # exit is registered, so no server outlives this process
    starting = threading.Thread(target=start, name="metis-prefect-server")
    starting.start()
    return starting.join


def exit_quickly(code: int) -> None:
    """Exit as Python would, less its last step. What a normal exit does first is done here, in
    its order: threading's shutdown (thread pools told to stop, non-daemon threads joined), then
    every `atexit` handler (logging's flush, Prefect's temporary server, multiprocessing's
    children). Then the process ends without the interpreter's finalization, whose garbage
    collection over torch's, vLLM's and Prefect's objects took 3-4 s after a training run had
    finished."""
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
