"""trainer.nodes: the torchrun command of each node, the config's checks, and `metis
trainer-node` refusing a node the config does not have (the two-node group itself runs in
tests/integration/test_trainer_group.py)."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from metis_core.config import TrainerConfig
from metis_core.trainer.nodes import torchrun_command
from tests.conftest import REPO


def test_one_machine_is_standalone():
    command = torchrun_command(4)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nnodes" not in command
    assert command[command.index("--nproc_per_node") + 1] == "4"


def test_each_node_starts_its_share_with_static_ranks():
    command = torchrun_command(8, nodes=2, node_rank=1, rendezvous="10.0.0.5:29511")
    value = {flag: command[command.index(flag) + 1] for flag in
             ("--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port")}  # fmt: skip
    assert value == {"--nproc_per_node": "4", "--nnodes": "2", "--node_rank": "1",
                     "--master_addr": "10.0.0.5", "--master_port": "29511"}  # fmt: skip
    assert "--standalone" not in command and command[-2:] == [
        "-m",
        "metis_core.trainer.rank_worker",
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ranks": 3, "nodes": 2}, "split evenly"),
        ({"ranks": 2, "nodes": 2, "rendezvous": "node0"}, "HOST:PORT"),
        # rank 0 alone reads the masters whole, which ZeRO-1 gathers in a collective
        ({"ranks": 2, "zero_stage": 1, "precision": "bf16"}, "zero_stage 0"),
    ],
)
def test_bad_node_settings_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        TrainerConfig(**settings)


@pytest.mark.parametrize(
    ("node_rank", "settings", "message"),
    [
        ("1", [], "trainer.nodes is 1"),
        ("0", ["trainer.nodes=2", "trainer.ranks=2"], "must be 1 to 1"),
        ("2", ["trainer.nodes=2", "trainer.ranks=2"], "must be 1 to 1"),
    ],
)
def test_trainer_node_refuses_a_node_the_config_lacks(node_rank, settings, message):
    args = [a for s in settings for a in ("--set", s)]
    done = subprocess.run([sys.executable, "-m", "flows.cli", "trainer-node", "--node-rank",
                           node_rank, *args], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and message in done.stderr, done.stderr
