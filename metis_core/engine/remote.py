"""The inference engine in a process of its own: a `PolicyEngine` run by a worker process, driven
over a pipe, so that inference and training can sit on different devices (and later machines).

`RemoteEngine` satisfies the `Engine` port (metis_core/ports.py) by forwarding each call to the
worker and waiting for its answer; an exception raised there is raised here again, with the
worker's traceback as its cause. The tokenizer is loaded here from the same model folder, so the
stages encode and decode without a round trip.

Weights travel through shared memory, not the pipe: `load_weights` copies the trainer's tensors
into one shared buffer (allocated once, mapped by the worker the first time it is sent: torch's
reductions pass its file descriptor) and sends only their names, dtypes, shapes and offsets. A
push costs one memory copy on top of what the in-process engine does (bench/engine_placement.py).

The worker is not daemonic (vLLM may start processes of its own, which a daemonic process may not)
so it must end by itself when the trainer does: it exits on `close`, on the pipe's end-of-file,
and, from a watchdog thread, as soon as its parent process is gone (a SIGKILLed trainer closes
no pipe the worker is waiting on while it is busy generating).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing  # noqa: F401  registers torch's shared-memory reductions

from metis_core.engine.vllm_engine import PolicyEngine
from metis_core.ports import Completion, Engine, Tokenizer
from metis_core.weight_buffer import plan, views

PARENT_POLL_S = 0.5  # how often the worker checks that the trainer process is still there
START_TIMEOUT_S = 900.0  # vLLM on a busy 2-core machine can take minutes to start


class EngineProcessDied(RuntimeError):
    """The worker process ended without answering."""


class RemoteTraceback(Exception):
    """The worker's traceback text, attached as the cause of the exception raised here."""

    def __str__(self) -> str:
        return "\n\n(in the engine process)\n" + str(self.args[0])


def _watch_parent(parent_pid: int) -> None:
    """Exit the worker once its parent is gone (reparented: getppid changes)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(PARENT_POLL_S)


def _serve(
    conn: multiprocessing.connection.Connection,
    parent_pid: int,
    engine_class: Callable[..., Engine],
    engine_args: dict[str, Any],
) -> None:
    """The worker's loop: build the engine, then answer (method, args, kwargs) until told to stop
    or the pipe closes."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        engine = engine_class(**engine_args)
    except BaseException as exc:
        _send_error(conn, exc)
        return
    conn.send(("ok", os.getpid()))
    buffer: torch.Tensor | None = None
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):  # the trainer closed its end or is gone
            engine.close()
            return
        try:
            if method == "close":
                engine.close()
                conn.send(("ok", None))
                return
            if method == "load_weights":
                sent, layout = args
                buffer = sent if sent is not None else buffer
                assert buffer is not None, "the first weight push carries the buffer"
                result = engine.load_weights(views(buffer, layout))
            else:
                result = getattr(engine, method)(*args, **kwargs)
            conn.send(("ok", result))
        except BaseException as exc:
            _send_error(conn, exc)


def _send_error(conn: multiprocessing.connection.Connection, exc: BaseException) -> None:
    """The exception itself when it pickles (else a RuntimeError naming it), and its traceback."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
        sendable: BaseException = exc
    except Exception:
        sendable = RuntimeError(f"{type(exc).__name__}: {exc}")
    conn.send(("error", (sendable, text)))


class RemoteEngine:
    """A `PolicyEngine` in a worker process: same constructor, same methods (the Engine port)."""

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str,
        max_model_len: int,
        seed: int,
        start_timeout: float = START_TIMEOUT_S,
        engine_class: Callable[..., Engine] = PolicyEngine,
    ) -> None:
        """Start the worker and wait until its engine is up (`engine_class`, importable by name,
        is built there with the other arguments; tests hand it a fake)."""
        from transformers import AutoTokenizer

        self.model_dir = str(model_dir)
        self.tokenizer: Tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._buffer: torch.Tensor | None = None  # the shared weight buffer, once allocated
        self._buffer_sent = False
        self._lock = threading.RLock()  # one request (and one push) at a time, any thread
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        engine_args = {
            "model_dir": self.model_dir,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "seed": seed,
        }
        self.process = context.Process(
            target=_serve,
            args=(child_conn, os.getpid(), engine_class, engine_args),
            name="metis-engine",
            daemon=False,
        )
        self.process.start()
        child_conn.close()  # the worker holds its end; ours closing lets it see end-of-file
        # runs on close(), on garbage collection, and at exit before multiprocessing joins the
        # (non-daemonic) worker, which would otherwise wait forever for a command
        self._finalizer = multiprocessing.util.Finalize(
            self, _stop, args=(self._conn, self.process), exitpriority=10
        )
        try:
            self.pid: int = self._answer(start_timeout)
        except BaseException:
            self.close()
            raise

    def _answer(self, timeout: float | None = None) -> Any:
        """The worker's answer to the last request (raising what it raised)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._conn.poll(1.0):
            if not self.process.is_alive() and not self._conn.poll():
                raise EngineProcessDied(f"the engine process exited ({self.process.exitcode})")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the engine process did not answer in {timeout:.0f} s")
        try:
            status, payload = self._conn.recv()
        except EOFError as exc:
            raise EngineProcessDied(f"the engine process exited ({self.process.exitcode})") from exc
        if status == "error":
            exc, text = payload
            raise exc from RemoteTraceback(text)
        return payload

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if not self._finalizer.still_active():
                raise EngineProcessDied("the engine is closed")
            self._conn.send((method, args, kwargs))
            return self._answer()

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        stop: Sequence[str] = (),
        logprobs: bool = True,
        top_logprobs: int = 0,
        regex: str | Sequence[str | None] | None = None,
        seed: int,
    ) -> list[list[Completion]]:
        """PolicyEngine.generate, in the worker."""
        return self._call(
            "generate",
            [list(ids) for ids in prompt_token_ids],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            stop=list(stop),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            regex=regex if regex is None or isinstance(regex, str) else list(regex),
            seed=seed,
        )

    def next_token_logprobs(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        allowed_token_ids: Sequence[Sequence[int]],
        temperature: float,
    ) -> list[dict[int, float]]:
        """PolicyEngine.next_token_logprobs, in the worker."""
        prompts = [list(ids) for ids in prompt_token_ids]
        allowed = [list(ids) for ids in allowed_token_ids]
        return self._call("next_token_logprobs", prompts, allowed, temperature)

    def sequence_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """PolicyEngine.sequence_logprobs, in the worker."""
        return self._call("sequence_logprobs", list(token_ids))

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the tensors into the shared buffer (a new one when they no longer fit) and have
        the worker load them from there; only the layout goes through the pipe."""
        tensors = list(named_tensors)
        layout, size = plan(tensors)
        with self._lock, torch.no_grad():
            if self._buffer is None or self._buffer.numel() < size:
                self._buffer = torch.empty(size, dtype=torch.uint8).share_memory_()
                self._buffer_sent = False
            for (_, tensor), (_, dtype, shape, offset) in zip(tensors, layout, strict=True):
                nbytes = tensor.numel() * tensor.element_size()
                self._buffer[offset : offset + nbytes].view(dtype).view(shape).copy_(tensor)
            sent = None if self._buffer_sent else self._buffer
            self._call("load_weights", sent, layout)
            self._buffer_sent = True

    def close(self) -> None:
        """Stop the worker (closing its engine) and wait for it to exit."""
        self._finalizer()


def _stop(
    conn: multiprocessing.connection.Connection,
    process: multiprocessing.process.BaseProcess,
    timeout: float = 60.0,
) -> None:
    """Ask the worker to close its engine and exit; terminate it if it does not in `timeout`."""
    try:
        if process.is_alive():
            conn.send(("close", (), {}))
            if conn.poll(timeout):
                conn.recv()
    except (EOFError, OSError, BrokenPipeError):
        pass
    finally:
        conn.close()
    process.join(timeout)
    if process.is_alive():
        process.terminate()
        process.join(10)
    if process.is_alive():
        process.kill()
        process.join()
