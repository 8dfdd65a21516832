"""Where a trainer group's ranks run: torchrun on this machine for all of them, or one torchrun
per node with static ranks (node i holds ranks i * ranks/nodes and up, so rank 0, which talks to
the flow, is on node 0, the flow's machine). The other nodes start theirs with `metis
trainer-node --node-rank I` (`start_node`) and the same config as the run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from metis_core.trainer_config import TrainerConfig


def torchrun_command(ranks: int, nodes: int = 1, node_rank: int = 0,
                     rendezvous: str = "127.0.0.1:29500") -> list[str]:  # fmt: skip
    """The torchrun command that starts node `node_rank`'s share of a group of `ranks` ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node"]
    command.append(str(ranks // nodes))
    if nodes == 1:
        command.append("--standalone")
    else:  # torchrun's static rendezvous: global rank = node_rank * ranks per node + local rank
        host, port = rendezvous.rsplit(":", 1)
        command += ["--nnodes", str(nodes), "--node_rank", str(node_rank),
                    "--master_addr", host, "--master_port", port]  # fmt: skip
    return [*command, "-m", "metis_core.trainer.rank_worker"]


class NodeError(ValueError):
    """`metis trainer-node` asked for a node the config does not have."""


def start_node(trainer: TrainerConfig, node_rank: int) -> NoReturn:
    """Become torchrun for node `node_rank`'s ranks (metis_core/trainer/rank_worker.py): they
    join the run's trainer group at trainer.rendezvous, take their shares of every update, and
    end with the run. Signals go to torchrun, which stops its ranks."""
    if trainer.nodes < 2:
        raise NodeError(
            "trainer.nodes is 1: all of a run's ranks are on its own machine. Give this command "
            "the run's config (trainer.nodes, trainer.ranks, trainer.rendezvous)"
        )
    if not 1 <= node_rank < trainer.nodes:
        raise NodeError(
            f"--node-rank must be 1 to {trainer.nodes - 1} with trainer.nodes={trainer.nodes} "
            "(node 0 is the run's own machine: `metis train` starts its ranks)"
        )
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("METIS_TRAINER_")}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    command = torchrun_command(trainer.ranks, trainer.nodes, node_rank, trainer.rendezvous)
    print(
        f"metis: node {node_rank} of {trainer.nodes}: {trainer.ranks // trainer.nodes} ranks, "
        f"joining node 0 at {trainer.rendezvous}",
        flush=True,
    )
    os.execvpe(command[0], command, env)
