"""The trainer as N data-parallel ranks in processes of their own (`trainer.ranks` > 1), started by
torchrun, the launcher that ships with torch, and driven from the flow's process.

`TrainerGroup` satisfies the `Trainer` port (metis_core/ports.py) as `RemoteEngine` does the
Engine port: each call goes to rank 0 (metis_core/trainer/rank_worker.py) over a Unix socket and
waits for its answer; an exception raised there is raised here again, with the rank's traceback
as its cause. Rank 0 broadcasts what every rank must take (train_step, checkpoint save and load)
and each rank trains on its share of the batch, so the update equals one rank's on the whole
batch (tests/integration/test_trainer_group.py).

Weights for the engine come from rank 0 through shared memory, not the socket: one file mapped
by both processes (and unlinked once both have it), into which rank 0 copies the policy at each
`named_weights`; the views handed out stay valid until the next call.

The ranks end with the group: on `close`, when the socket closes, and from each rank's watchdog
as soon as this process is gone. An error in a request every rank takes ends the group (the
ranks may be stuck in a collective); the next call then raises TrainerGroupDied.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import multiprocessing.util
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from metis_core.config import TrainerConfig
from metis_core.ports import JudgmentBatch, RolloutBatch
from metis_core.rounding import engine_weights
from metis_core.trainer.nodes import torchrun_command
from metis_core.trainer.rank_worker import EVERY_RANK, map_buffer, receive, send
from metis_core.weight_buffer import views

log = logging.getLogger(__name__)

START_TIMEOUT_S = 900.0  # DeepSpeed on a busy 2-core machine takes a while to start
STOP_TIMEOUT_S = 60.0
OUTPUT_TAIL = 4000  # characters of the ranks' output quoted when the group dies


class TrainerGroupDied(RuntimeError):
    """The trainer group ended without answering (its ranks' last output is in the message)."""


class RankTraceback(Exception):
    """A rank's traceback text, attached as the cause of the exception raised here."""

    def __str__(self) -> str:
        return "\n\n(in the trainer group, " + str(self.args[0])


def _temporary_dir() -> Path:
    """A private folder for the socket, the weight file and the ranks' output; in /dev/shm when
    there is one, so the weight file is memory, not disk."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="metis-trainer-", dir=shm if shm.is_dir() else None))


class _Handles:
    """What `_stop` needs to end the group (kept apart from the group, for its finalizer)."""

    def __init__(self, process: subprocess.Popen[bytes], folder: Path, output: IO[bytes]) -> None:
        self.process = process
        self.folder = folder
        self.output = output
        self.conn: multiprocessing.connection.Connection | None = None


class TrainerGroup:
    """N `PolicyTrainer` ranks under torchrun: same constructor, same methods (the Trainer port)."""

    def __init__(
        self,
        model_dir: str | Path,
        cfg: TrainerConfig,
        max_response_tokens: int,
        engine_dtype: str = "float32",
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        """Start cfg.ranks ranks and wait until each holds the policy in `model_dir`."""
        self.ranks, self.nodes = cfg.ranks, cfg.nodes
        self._lock = threading.RLock()  # one request at a time, any thread
        folder = _temporary_dir()
        self.output_path = folder / "ranks.log"
        address = str(folder / "socket")
        authkey = os.urandom(32)
        listener = multiprocessing.connection.Listener(address, "AF_UNIX", authkey=authkey)
        root = str(Path(__file__).resolve().parents[2])
        env = os.environ | {
            "METIS_TRAINER_ADDRESS": address,
            "METIS_TRAINER_AUTHKEY": authkey.hex(),
            "METIS_TRAINER_CLIENT_PID": str(os.getpid()),
            "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        command = torchrun_command(cfg.ranks, cfg.nodes, 0, cfg.rendezvous)
        output = self.output_path.open("wb")
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        self.process = process
        self._handles = _Handles(process, folder, output)
        # runs on close(), on garbage collection, and at exit
        self._finalizer = multiprocessing.util.Finalize(
            self, _stop, args=(self._handles,), exitpriority=10
        )
        try:
            self._conn = self._handles.conn = _accept(listener, process, start_timeout)
        except BaseException as exc:  # torchrun or a rank failed before rank 0 called, or late
            tail = self.output_tail()
            self.close()
            if isinstance(exc, TrainerGroupDied):
                raise TrainerGroupDied(f"{exc}; the ranks' last output:\n{tail}") from None
            if isinstance(exc, TimeoutError) and cfg.nodes > 1:
                raise TimeoutError(
                    f"{exc}: the ranks wait for all {cfg.nodes} nodes; start nodes 1 to "
                    f"{cfg.nodes - 1} with `metis trainer-node --node-rank I` and this run's "
                    f"config, on machines that reach {cfg.rendezvous} (trainer.rendezvous)"
                ) from None
            raise
        try:
            started = self._call("start", str(model_dir), cfg.model_dump(mode="json"),
                                 max_response_tokens, engine_dtype)  # fmt: skip
            self.pids: list[int] = started["pids"]
            size = started["weight_bytes"]
            weights_file = folder / "weights"
            with weights_file.open("wb") as f:
                f.truncate(size)
            self._buffer = map_buffer(str(weights_file), size)
            self._call("map_weights", str(weights_file), size)
            weights_file.unlink()  # both processes have it mapped; nothing is left to clean up
        except BaseException:
            self.close()
            raise

    # ---- the wire -------------------------------------------------------------------------------
    def _answer(self) -> Any:
        """Rank 0's answer to the last request (raising what it raised)."""
        while not self._conn.poll(1.0):
            if self.process.poll() is not None and not self._conn.poll():
                raise self._died()
        try:
            status, payload = receive(self._conn)
        except (EOFError, OSError) as exc:
            raise self._died() from exc
        if status == "error":
            exc, text = payload
            raise exc from RankTraceback(text)
        return payload

    def _died(self) -> TrainerGroupDied:
        with contextlib.suppress(subprocess.TimeoutExpired):  # torchrun stops the other ranks
            self.process.wait(STOP_TIMEOUT_S)
        return TrainerGroupDied(
            f"the trainer group ended (torchrun exit code {self.process.returncode}); "
            f"the ranks' last output:\n{self.output_tail()}"
        )

    def output_tail(self) -> str:
        """The end of what torchrun and this machine's ranks printed."""
        try:
            tail = self.output_path.read_bytes()[-OUTPUT_TAIL:].decode(errors="replace")
        except OSError:
            tail = "(the output file is gone)"
        if self.nodes > 1:
            tail += (f"\n(the ranks of nodes 1 to {self.nodes - 1} print to their own `metis "
                     "trainer-node` output, on their machines)")  # fmt: skip
        return tail

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            if not self._finalizer.still_active():
                raise TrainerGroupDied("the trainer group is closed")
            if self.process.poll() is not None:
                raise self._died()
            try:
                send(self._conn, (method, args))
                return self._answer()
            except Exception as exc:
                if method in EVERY_RANK:  # the ranks end after such an error: so does the group
                    self._end_after(exc)
                raise

    def _end_after(self, exc: Exception) -> None:
        """Close the group after `exc` in a request every rank took, adding the ranks' output
        to its traceback: the failure may have started in another rank than 0."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)
        if isinstance(exc.__cause__, RankTraceback):
            text = exc.__cause__.args[0]
            exc.__cause__ = RankTraceback(f"{text}\nthe ranks' last output:\n{self.output_tail()}")
        self.close()

    # ---- the Trainer port -----------------------------------------------------------------------
    def train_step(
        self, rollouts: RolloutBatch, judgments: JudgmentBatch | None, lam: float
    ) -> dict[str, float]:
        """PolicyTrainer.train_step on every rank, each on its share; the whole batch's metrics."""
        return self._call("train_step", rollouts, judgments, lam)

    def prompt_features(self, prompts: list[list[int]]) -> list[list[float]]:
        """PolicyTrainer.prompt_features on rank 0."""
        return self._call("prompt_features", prompts)

    def sequence_logprobs(self, token_ids: list[int]) -> list[float]:
        """PolicyTrainer.sequence_logprobs on rank 0."""
        return self._call("sequence_logprobs", list(token_ids))

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Rank 0's weights, copied into the shared buffer: views valid until the next call."""
        layout = self._call("named_weights")
        yield from views(self._buffer, layout)

    def engine_weights(self, engine_dtype: str, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Rank 0's fp32 weights, rounded stochastically for a bf16 engine (rounding.py)."""
        yield from engine_weights(self.named_weights(), engine_dtype, step)

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        """A DeepSpeed checkpoint, every rank taking part."""
        self._call("save_checkpoint", directory, tag, client_state)

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        """Every rank loads the checkpoint; its client state."""
        return self._call("load_checkpoint", directory, tag)

    def export_hf(self, directory: Path) -> None:
        """PolicyTrainer.export_hf on rank 0."""
        self._call("export_hf", directory)

    def weight_digests(self) -> list[str]:
        """Each rank's SHA-256 of its weights, in rank order: all alike unless the ranks drifted."""
        return self._call("weight_digests")

    def close(self) -> None:
        """Stop every rank and wait for torchrun to exit."""
        self._finalizer()


def _accept(
    listener: multiprocessing.connection.Listener,
    process: subprocess.Popen[bytes],
    timeout: float,
) -> multiprocessing.connection.Connection:
    """Rank 0's connection, unless torchrun ends or `timeout` passes first."""
    accepted: list[Any] = []

    def accept() -> None:
        try:
            accepted.append(listener.accept())
        except BaseException as exc:  # the listener closed under it, a bad authkey
            accepted.append(exc)

    threading.Thread(target=accept, daemon=True, name="metis-trainer-accept").start()
    deadline = time.monotonic() + timeout
    try:
        while not accepted:
            if process.poll() is not None:
                raise TrainerGroupDied(
                    f"torchrun exited ({process.returncode}) before rank 0 called"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank 0 did not call in {timeout:.0f} s")
            time.sleep(0.2)
    finally:
        listener.close()
    if isinstance(accepted[0], BaseException):
        raise accepted[0]
    return accepted[0]


def _stop(handles: _Handles, timeout: float = STOP_TIMEOUT_S) -> None:
    """Ask the ranks to close and exit; terminate torchrun (which stops its ranks) if they do
    not in `timeout`, kill it if that does not either."""
    process, conn = handles.process, handles.conn
    try:
        if conn is not None and process.poll() is None:
            send(conn, ("close", ()))
            if conn.poll(timeout):
                receive(conn)
    except (EOFError, OSError):
        pass
    finally:
        if conn is not None:
            conn.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    handles.output.close()
    if process.returncode != 0:  # keep what the ranks printed, for the post-mortem
        kept = Path(tempfile.gettempdir()) / f"metis-trainer-{process.pid}.log"
        with contextlib.suppress(OSError):
            shutil.move(handles.folder / "ranks.log", kept)
            log.warning(
                "the trainer group exited with %s; its output: %s", process.returncode, kept
            )
    shutil.rmtree(handles.folder, ignore_errors=True)
