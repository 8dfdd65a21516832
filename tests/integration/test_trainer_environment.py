"""The in-process trainer leaves no torch.distributed settings behind in the process's
environment: a process started after it (a `metis` command from a notebook that trained) would
inherit a MASTER_PORT this process still holds and fail with EADDRINUSE. A launcher's settings
are the launcher's: kept."""

import os

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

DISTRIBUTED = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _trainer(tiny_model):
    from metis_core.config import TrainerConfig
    from metis_core.trainer.policy_trainer import PolicyTrainer

    return PolicyTrainer(tiny_model, TrainerConfig(micro_batch_size=4), max_response_tokens=8)


def test_a_world_of_one_leaves_no_settings_behind(tiny_model, monkeypatch):
    for key in DISTRIBUTED:
        monkeypatch.delenv(key, raising=False)
    trainer = _trainer(tiny_model)
    assert trainer.engine.world_size == 1
    assert {key: os.environ[key] for key in DISTRIBUTED if key in os.environ} == {}


def test_a_launchers_settings_are_kept(tiny_model, monkeypatch):
    launched = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    launched["MASTER_PORT"] = str(free_port())
    for key, value in launched.items():
        monkeypatch.setenv(key, value)
    _trainer(tiny_model)
    assert {key: os.environ.get(key) for key in DISTRIBUTED} == launched
