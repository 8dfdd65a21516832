"""One rank of a trainer group (metis_core/trainer/group.py), as torchrun starts it
(`torchrun_command`): on one machine

    python -m torch.distributed.run --standalone --nproc_per_node N -m metis_core.trainer.rank_worker

or, over several nodes, one torchrun per node with static ranks (node i holds ranks i * N/nodes
and up, so rank 0 is on node 0, the flow's machine; the others start with `metis trainer-node`).

Every rank holds a `PolicyTrainer`; rank 0 also holds the connection to the flow's process
(METIS_TRAINER_ADDRESS, a Unix socket, with METIS_TRAINER_AUTHKEY) and answers its requests.
A request that every rank must take (building the trainer, train_step, checkpoint save and load,
close) is broadcast to the others, and each rank trains on its share of the batch
(metis_core/trainer/shares.py); the others (features, log-probs, weights, the HF export) read
rank 0's copy of the policy, which every rank holds alike.

An error in rank 0 goes back to the flow with its traceback. After an error in a request every
rank takes, the others may wait in a collective that never comes, so the group ends: rank 0
exits once it has answered, another rank prints its traceback (torchrun's output, which the flow
reads when the group is gone) and exits, and torchrun stops the rest. A watchdog thread ends a
rank as soon as the flow's process or torchrun is gone, busy or not.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import multiprocessing.connection
import os
import pickle
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from metis_core.weight_buffer import Layout, plan, views

PARENT_POLL_S = 0.5  # how often a rank checks that the flow's process and torchrun are there
IDLE_TIMEOUT = datetime.timedelta(days=30)  # the others wait in a broadcast between requests
ERROR_GRACE_S = 2.0  # a failing rank > 0 waits this long, so rank 0 can answer with its error

EVERY_RANK = {
    "start",
    "train_step",
    "save_checkpoint",
    "load_checkpoint",
    "weight_digests",
    "close",
}
"""Requests every rank takes part in; the others are answered by rank 0 alone."""


def send(conn: multiprocessing.connection.Connection, message: Any) -> None:
    """`message`, pickled plainly. Connection.send uses multiprocessing's pickler, with which
    torch sends a tensor as a handle to its memory that only a process started by multiprocessing
    can open (a checkpoint's client state holds tensors: "digest sent was rejected")."""
    conn.send_bytes(pickle.dumps(message))


def receive(conn: multiprocessing.connection.Connection) -> Any:
    """What `send` sent."""
    return pickle.loads(conn.recv_bytes())


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie, awaiting its reaper, has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def _forget_group_folder() -> None:
    """Remove the flow's folder for this group (socket, output), which a flow's process that
    died could not: it would stay in /dev/shm."""
    shutil.rmtree(Path(os.environ["METIS_TRAINER_ADDRESS"]).parent, ignore_errors=True)


def _watch(client_pid: int | None, launcher_pid: int) -> None:
    """Exit this rank once the flow's process (on node 0) or torchrun (its parent) is gone. On
    the other nodes a rank notices the flow's end when its collectives with rank 0 fail."""
    while True:
        if client_pid is not None and gone(client_pid):
            _forget_group_folder()
            os._exit(1)
        if os.getppid() != launcher_pid:
            os._exit(1)
        time.sleep(PARENT_POLL_S)


def map_buffer(path: str, size: int) -> torch.Tensor:
    """The file at `path` (made by the flow's process, `size` bytes) mapped shared: writes here
    are what the flow reads there."""
    return torch.from_file(path, shared=True, size=size, dtype=torch.uint8)


class Rank:
    """A rank's trainer and the request handlers (`handle`)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.trainer: Any = None  # a PolicyTrainer, once `start` has built it
        self.buffer: torch.Tensor | None = None
        self.layout: Layout = []

    def handle(self, method: str, args: tuple[Any, ...]) -> Any:
        return getattr(self, f"_{method}")(*args)

    def _start(
        self, model_dir: str, cfg: dict[str, Any], max_response_tokens: int, engine_dtype: str
    ) -> dict[str, Any]:
        """Build the trainer; every rank's pid, and the weight buffer's size in bytes."""
        from metis_core.config import TrainerConfig
        from metis_core.trainer.policy_trainer import PolicyTrainer

        config = TrainerConfig.model_validate(cfg)
        self.trainer = PolicyTrainer(model_dir, config, max_response_tokens, engine_dtype)
        pids: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(pids, os.getpid())
        self.layout, size = plan(list(self.trainer.named_weights()))
        return {"pids": pids, "weight_bytes": size}

    def _train_step(self, rollouts: Any, judgments: Any, lam: float) -> dict[str, float]:
        from metis_core.trainer.shares import judgment_share, rollout_share

        mine = rollout_share(rollouts, self.rank, self.world)
        judged = judgment_share(judgments, self.rank, self.world)
        return self.trainer.train_step(mine, judged, lam)

    def _save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        self.trainer.save_checkpoint(directory, tag, client_state)

    def _load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        return self.trainer.load_checkpoint(directory, tag)

    def _weight_digests(self) -> list[str]:
        """Every rank's SHA-256 of its weights, in rank order (data parallel: all alike)."""
        digest = hashlib.sha256()
        for name, tensor in self.trainer.named_weights():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        digests: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(digests, digest.hexdigest())
        return digests

    def _close(self) -> None:
        return None

    def _prompt_features(self, prompts: list[list[int]]) -> list[list[float]]:
        return self.trainer.prompt_features(prompts)

    def _sequence_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.trainer.sequence_logprobs(token_ids)

    def _export_hf(self, directory: Path) -> None:
        self.trainer.export_hf(directory)

    def _map_weights(self, path: str, size: int) -> None:
        self.buffer = map_buffer(path, size)

    def _named_weights(self) -> Layout:
        """Copy the policy's weights into the shared buffer; their layout there."""
        assert self.buffer is not None, "map_weights comes first"
        tensors = list(self.trainer.named_weights())
        self.layout, size = plan(tensors)
        if size > self.buffer.numel():
            raise RuntimeError(f"the weights ({size} bytes) outgrew the buffer")
        with torch.no_grad():
            for (_, tensor), (_, target) in zip(
                tensors, views(self.buffer, self.layout), strict=True
            ):
                target.copy_(tensor)
        return self.layout


def _error(exc: BaseException) -> tuple[str, tuple[BaseException, str]]:
    """The exception itself when it pickles (else a RuntimeError naming it), and its traceback."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
        sendable: BaseException = exc
    except Exception:
        sendable = RuntimeError(f"{type(exc).__name__}: {exc}")
    return "error", (sendable, f"rank 0 of {torch.distributed.get_world_size()}\n{text}")


def serve(rank: Rank, conn: multiprocessing.connection.Connection | None) -> None:
    """Rank 0: answer the flow's requests (broadcasting those every rank takes) until `close`
    or end-of-file. The others: take the broadcast requests until `close`."""
    while True:
        request: list[Any] = [None]
        if conn is None:
            torch.distributed.broadcast_object_list(request, src=0)
        else:
            try:
                request[0] = receive(conn)
            except (EOFError, OSError):  # the flow closed its end or is gone
                request[0] = ("close", ())
            if request[0][0] in EVERY_RANK:
                torch.distributed.broadcast_object_list(request, src=0)
        method, args = request[0]
        try:
            result = rank.handle(method, args)
        except BaseException as exc:
            if conn is None:  # rank 0 may be waiting in a collective: end the group
                traceback.print_exc()
                sys.stderr.flush()
                time.sleep(ERROR_GRACE_S)
                os._exit(1)
            send(conn, _error(exc))
            if method in EVERY_RANK:  # the others may be waiting in a collective: end the group
                os._exit(1)
            continue
        if conn is not None:
            with contextlib.suppress(OSError):  # the flow is gone: the next recv ends the loop
                send(conn, ("ok", result))
        if method == "close":
            return


def check_one_gpu_each(local_rank: int, local_ranks: int, gpus: int) -> None:
    """On a machine with GPUs each rank takes the GPU of its local rank (DeepSpeed's rule): refuse,
    naming the fix, a node given more ranks than it has GPUs, rather than fail later in CUDA."""
    if gpus and local_rank >= gpus:
        raise SystemExit(
            f"this node runs {local_ranks} trainer ranks but has {gpus} GPU(s), one for each rank: "
            f"set trainer.ranks to at most {gpus} per node (trainer.ranks / trainer.nodes), or "
            "hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on the CPU"
        )


def main() -> None:
    from multiprocessing.connection import Client

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    check_one_gpu_each(
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        torch.cuda.device_count(),  # 0 without CUDA
    )
    from metis_core.trainer.distributed import init_deepspeed_distributed

    client = os.environ.get("METIS_TRAINER_CLIENT_PID")  # set on node 0, the flow's machine
    client_pid = int(client) if client else None
    threading.Thread(target=_watch, args=(client_pid, os.getppid()), daemon=True).start()
    init_deepspeed_distributed(timeout=IDLE_TIMEOUT)
    rank = torch.distributed.get_rank()
    conn = None
    if rank == 0:
        if client_pid is None:
            raise SystemExit("rank 0 belongs on node 0, the flow's machine: start the other nodes "
                             "with `metis trainer-node --node-rank I` and I >= 1")  # fmt: skip
        authkey = bytes.fromhex(os.environ["METIS_TRAINER_AUTHKEY"])
        conn = Client(os.environ["METIS_TRAINER_ADDRESS"], family="AF_UNIX", authkey=authkey)
    serve(Rank(rank, torch.distributed.get_world_size()), conn)
    if conn is not None:
        conn.close()
        # the flow's process died: its end of the socket closed with it
        if client_pid is not None and gone(client_pid):
            _forget_group_folder()
    torch.distributed.barrier()  # every rank has its `close`: tear the group down together
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    # Nothing is left to do (the group is torn down, checkpoints were written synchronously):
    # end without the interpreter's teardown, where native threads (gloo's, DeepSpeed's) still
    # joinable at exit made rank 0 abort now and then ("terminate called without an active
    # exception", SIGABRT), so torchrun reported a clean close as a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
