"""The trainer as a group of 2 data-parallel ranks under torchrun (trainer.ranks=2,
metis_core/trainer/group.py), on one machine and on two "nodes" (processes standing in for
hosts), against one in-process PolicyTrainer on the tiny model: the same step on the same batch,
ranks that agree, errors that come back with their traceback, a gap check over the whole batch,
and ranks that end with close(), with a failed collective, and with their SIGKILLed parent."""

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from metis_core.config import TrainerConfig
from metis_core.ports import JudgmentBatch, RolloutBatch
from tests.conftest import (
    REPO,
    alive,
    free_port,
    kill_group,
    run_metis,
    set_args,
    start_metis,
    tiny_overrides,
    wait_gone,
)

pytestmark = pytest.mark.integration

# no clip, a large step, no gap check (the batch has no engine log-probs)
SETTINGS = dict(lr=1e-3, micro_batch_size=4, grad_clip=1e9, max_logprob_gap=100.0, precision="fp32")


def batch(groups=6, n=3, seed=0):
    """`groups` prompts x `n` random responses, their advantages, and one judgment per prompt."""
    rng = random.Random(seed)
    prompts, responses, advantages = [], [], []
    for _ in range(groups):
        prompt = [rng.randrange(100, 30000) for _ in range(rng.randint(8, 16))]
        for _ in range(n):
            prompts.append(prompt)
            responses.append([rng.randrange(100, 30000) for _ in range(rng.randint(2, 9))])
            advantages.append(rng.uniform(-1, 1))
    judgments = JudgmentBatch(
        [[rng.randrange(100, 30000) for _ in range(12)] for _ in range(groups)],
        [[rng.randrange(100, 30000) for _ in range(3)] for _ in range(groups)],
        [rng.uniform(0, 1) for _ in range(groups)],
        baseline=0.4,
    )
    return RolloutBatch(prompts, responses, advantages), judgments


def start_node_1(settings: dict, log: Path) -> subprocess.Popen:
    """Node 1 of a trainer on trainer.nodes=2, as a user starts it on another host."""
    args = set_args([f"trainer.{key}={value}" for key, value in settings.items()])
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", "trainer-node", "--node-rank",
                                 "1", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def test_two_ranks_on_two_nodes_step_as_one_rank_on_the_whole_batch(
    tiny_model, tmp_path, monkeypatch
):
    """trainer.nodes=2 with processes standing in for hosts: node 1's rank starts with `metis
    trainer-node` (before the run, as on a cluster whose nodes come up in any order), node 0's
    with the group; one rank per node. (One machine's ranks, --standalone, run in the tests
    below and in the training runs.)"""
    import torch

    # the in-process trainer below is a world of one: no launcher's settings in its way
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)

    from metis_core.trainer.group import TrainerGroup, TrainerGroupDied
    from metis_core.trainer.policy_trainer import PolicyTrainer
    from metis_core.trainer.shares import EmptyShare

    settings = {"ranks": 2, "nodes": 2, "rendezvous": f"127.0.0.1:{free_port()}"} | SETTINGS
    node = start_node_1(settings, tmp_path / "node1.log")
    rollouts, judgments = batch()
    group = TrainerGroup(tiny_model, TrainerConfig(**settings), max_response_tokens=16)
    try:
        assert len(set(group.pids)) == 2 and all(alive(pid) for pid in group.pids)
        assert node.poll() is None and "joining node 0" in (tmp_path / "node1.log").read_text()
        before = {name: w.clone() for name, w in group.named_weights()}
        got = group.train_step(rollouts, judgments, lam=0.5)
        local = PolicyTrainer(tiny_model, TrainerConfig(**SETTINGS), max_response_tokens=16)
        want = local.train_step(rollouts, judgments, lam=0.5)
        # the whole batch's gradient and losses, not rank 0's share of them
        assert sorted(got) == sorted(want)
        for key in ("task_loss", "judge_loss", "response_tokens"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), (key, got, want)
        assert (got["trainer/ranks"], want["trainer/ranks"]) == (2, 1)
        # the step moved the weights 1e-3 (lr); the two ways agree to float noise
        weights = dict(group.named_weights())
        moved = max((weights[k] - before[k]).abs().max().item() for k in weights)
        gap = max((w - weights[k]).abs().max().item() for k, w in local.named_weights())
        assert moved > 5e-4 and gap < 1e-4, (moved, gap)
        digests = group.weight_digests()  # every rank's weights, hashed there
        assert len(digests) == 2 and digests[0] == digests[1]
        probe = rollouts.prompt_ids[0] + rollouts.response_ids[0]
        lp_group, lp_local = group.sequence_logprobs(probe), local.sequence_logprobs(probe)
        assert max(abs(a - b) for a, b in zip(lp_group, lp_local, strict=True)) < 1e-4

        # a checkpoint every rank saves and loads, with tensors in its client state (as a
        # run's sampler state has): a later step is undone
        state = {"step": 0, "features": torch.arange(4.0)}
        group.save_checkpoint(tmp_path / "checkpoints", "step-000000", state)
        group.train_step(rollouts, judgments, lam=0.5)
        assert group.weight_digests() != digests
        loaded = group.load_checkpoint(tmp_path / "checkpoints", "step-000000")
        assert torch.equal(loaded["features"], state["features"])
        assert group.weight_digests() == digests

        # an error in rank 0 alone comes back with its traceback; the group goes on
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(OSError) as caught:  # a folder under a file
            group.export_hf(blocker / "hf")
        assert "(in the trainer group, rank 0 of 2" in str(caught.value.__cause__)
        assert group.sequence_logprobs(probe) == lp_group

        # one prompt group cannot feed two ranks: rank 1 fails, the group ends, its traceback
        # comes back in the error
        one_group = RolloutBatch(rollouts.prompt_ids[:3], rollouts.response_ids[:3],
                                 rollouts.advantages[:3])  # fmt: skip
        with pytest.raises(Exception) as failed:  # noqa: PT011 (rank 0 sees a broken collective)
            group.train_step(one_group, None, lam=0.0)
        assert group.process.poll() is not None
        assert all(wait_gone(pid, 15) for pid in group.pids), "a rank outlived its group"
        assert node.wait(timeout=60) != 0  # node 1's torchrun ends with its failed rank
        # rank 1's traceback is in node 1's output, which the error points to
        assert "`metis trainer-node` output" in str(failed.value.__cause__)
        assert EmptyShare.__name__ in (tmp_path / "node1.log").read_text()
        with pytest.raises(TrainerGroupDied):
            group.sequence_logprobs(probe)
    finally:
        group.close()
        if node.poll() is None:
            node.kill()


def test_close_ends_every_rank(tiny_model):
    from metis_core.trainer.group import TrainerGroup

    group = TrainerGroup(tiny_model, TrainerConfig(ranks=2, **SETTINGS), max_response_tokens=16)
    pids = group.pids
    group.close()
    assert group.process.returncode == 0
    assert not any(alive(pid) for pid in pids)


def test_a_gap_over_the_limit_in_one_share_stops_every_rank(tiny_model):
    """The engine/trainer gap is the whole batch's: rank 1's share alone is far off, rank 0's
    exact, and both ranks raise EngineTrainerMismatch (none waits in a collective for the
    other); the run's error names the gap, and the group ends."""
    from metis_core.trainer.group import TrainerGroup
    from metis_core.trainer.rollout_correction import EngineTrainerMismatch

    config = TrainerConfig(ranks=2, **(SETTINGS | {"max_logprob_gap": 0.05}))
    group = TrainerGroup(tiny_model, config, max_response_tokens=16)
    pids = group.pids
    try:
        rollouts, judgments = batch(groups=4, n=2)
        engine = []
        for row, (prompt, response) in enumerate(
            zip(rollouts.prompt_ids, rollouts.response_ids, strict=True)
        ):
            exact = group.sequence_logprobs(prompt + response)[-len(response) :]
            on_rank_1 = (row // 2) % 2 == 1  # prompt group i trains on rank i mod 2
            engine.append([lp - 1.0 if on_rank_1 else lp for lp in exact])
        rollouts.engine_logprobs = engine
        with pytest.raises(EngineTrainerMismatch, match="max_logprob_gap = 0.05"):
            group.train_step(rollouts, judgments, lam=0.5)
        assert group.process.poll() is not None
        assert all(wait_gone(pid, 15) for pid in pids), "a rank outlived its group"
    finally:
        group.close()


PARENT = """
import sys
from metis_core.config import TrainerConfig
from metis_core.trainer.group import TrainerGroup
from tests.integration.test_trainer_group import SETTINGS, batch
# a step of a minute or more: the ranks are busy (in collectives) long after the kill, and only
# their watchdogs end them in time
config = TrainerConfig(ranks=2, ppo_epochs=32, **SETTINGS)
group = TrainerGroup(sys.argv[1], config, max_response_tokens=16)
print(group.process.pid, *group.pids, group.output_path.parent, flush=True)
rollouts, judgments = batch(groups=8, n=8)
group.train_step(rollouts, judgments, lam=0.5)
"""


def test_the_ranks_die_with_their_parent(tiny_model):
    import time

    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tiny_model)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        *pids, folder = parent.stdout.readline().split()
        torchrun, *ranks = (int(pid) for pid in pids)
        assert len(ranks) == 2 and all(alive(pid) for pid in (torchrun, *ranks))
        time.sleep(3)  # a train_step is under way
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
    assert all(wait_gone(pid, 8) for pid in ranks), "a rank outlived the flow's process"
    assert wait_gone(torchrun, 15), "torchrun outlived the flow's process"
    assert not Path(folder).exists(), "the group's folder (socket, output) was left behind"


def group_of(client_pid: int) -> list[int]:
    """The processes (torchrun, ranks) of trainer groups that process `client_pid` started."""
    mark = f"METIS_TRAINER_CLIENT_PID={client_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and mark in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def step_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    from metis_core.store.outcomes import OutcomeStore

    metrics = OutcomeStore(run_dir / "history.duckdb").step_metrics(run_dir.name)
    return {step: m for step, m in metrics if step >= 0}


def assert_synced(metrics: dict[int, dict[str, float]]) -> None:
    """Steps 0 and 1 ran, the engine held rank 0's weights after each (the sync check), and each
    update saw the engine's own log-probs of what it sampled (the gap check, whole batch)."""
    assert sorted(metrics) == [0, 1]
    for m in metrics.values():
        assert m["trainer/ranks"] == 2  # the update ran in the group, not in the flow's process
        assert m["sync/max_logprob_gap"] < 1e-3, m
        assert m["mismatch/logprob_gap_mean"] < 1e-3, m


@pytest.mark.slow  # two starts of a run, one killed (about 3 minutes)
def test_a_run_on_two_ranks_killed_resumes_from_its_checkpoint(tiny_model, tmp_path, monkeypatch):
    """A 2-step `metis train --set trainer.ranks=2` tiny run, SIGKILLed as step 1's update starts
    (its ranks go with it), then the same command: every rank loads step 0's checkpoint, and
    both steps' sync and gap checks pass (the whole run on two ranks, in two attempts)."""
    import contextlib
    import time

    out = tmp_path / "runs"
    overrides = tiny_overrides(tiny_model, out, steps=2, extra=["trainer.ranks=2"])
    args = ["train", "--run-id", "ranks", *set_args(overrides)]
    # killed as step 1's update starts: after step 0's checkpoint, the group up and idle
    monkeypatch.setenv("METIS_KILL_AT", "update@1")
    log = tmp_path / "killed.log"
    proc = start_metis(tmp_path, args, log)
    try:
        assert proc.wait(timeout=900) == -signal.SIGKILL, log.read_text()[-3000:]
        deadline = time.monotonic() + 20
        while group_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_of(proc.pid), "the trainer group outlived the flow's process"
    finally:
        with contextlib.suppress(ProcessLookupError):  # its Prefect server, if any is left
            kill_group(proc)
    monkeypatch.delenv("METIS_KILL_AT")
    done = run_metis(tmp_path, args)  # the same command continues the run: every rank loads
    assert "continuing at step 1" in done.stdout  # step 0's checkpoint
    assert_synced(step_metrics(out / "ranks"))
    assert json.loads((out / "ranks" / "run.json").read_text()).get("finished")
