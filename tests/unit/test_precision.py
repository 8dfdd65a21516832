"""trainer.precision=auto and model.dtype=auto (the defaults) become bf16 where the trainer's
hardware multiplies bf16 natively and fp32 elsewhere; what they became is stored with the config,
so a run resumed on other hardware keeps it."""

import pytest

from metis_core import trainer_config
from metis_core.config import ModelConfig, RunConfig
from metis_core.precision import auto_engine_dtype, auto_precision
from metis_core.trainer_config import TrainerConfig


@pytest.fixture
def hardware(monkeypatch):
    """Set whether this 'machine' has bf16 matmuls."""

    def native(value: bool) -> None:
        monkeypatch.setattr(trainer_config, "trainer_has_native_bf16", lambda: value)

    return native


@pytest.mark.parametrize(
    ("native", "precision", "dtype"), [(True, "bf16", "bfloat16"), (False, "fp32", "float32")]
)
def test_the_default_follows_the_hardware(hardware, native, precision, dtype):
    hardware(native)
    for cfg in (RunConfig(), RunConfig.model_validate({}), RunConfig.model_validate({"seed": 3})):
        assert (cfg.trainer.precision, cfg.model.dtype) == (precision, dtype)
    assert TrainerConfig().precision == precision


@pytest.mark.parametrize("native", [True, False])
def test_what_is_set_wins_and_the_engine_follows_the_trainer(hardware, native):
    hardware(native)
    fp32 = RunConfig.model_validate({"trainer": {"precision": "fp32"}})
    assert (fp32.trainer.precision, fp32.model.dtype) == ("fp32", "float32")
    bf16 = RunConfig.model_validate({"trainer": {"precision": "bf16"}})
    assert (bf16.trainer.precision, bf16.model.dtype) == ("bf16", "bfloat16")
    autocast = RunConfig(trainer=TrainerConfig(precision="autocast-bf16"))
    assert autocast.model.dtype == "float32"  # autocast keeps fp32 weights
    engine = RunConfig.model_validate({"model": {"dtype": "float32"}})
    assert engine.model.dtype == "float32"
    assert engine.trainer.precision == ("bf16" if native else "fp32")
    given = RunConfig(model=ModelConfig(), trainer=TrainerConfig(precision="bf16"))
    assert given.model.dtype == "bfloat16"


def test_auto_stays_fp32_where_bf16_state_would_be_sharded(hardware):
    hardware(True)
    assert TrainerConfig(zero_stage=3).precision == "fp32"  # stochastic rounding needs whole copies
    assert TrainerConfig(zero_stage=3, bf16_rounding="nearest").precision == "bf16"
    assert TrainerConfig(ranks=2, zero_stage=1).precision == "fp32"
    assert TrainerConfig(ranks=2, zero_stage=0).precision == "bf16"
    assert TrainerConfig(zero_stage=2).precision == "bf16"
    assert RunConfig.model_validate({"trainer": {"zero_stage": 3}}).model.dtype == "float32"


def test_a_stored_config_keeps_what_auto_became(hardware):
    hardware(True)
    stored = RunConfig().to_json()
    assert '"precision": "bf16"' in stored and '"dtype": "bfloat16"' in stored
    hardware(False)  # resumed on a machine without bf16 matmuls
    resumed = RunConfig.model_validate_json(stored)
    assert (resumed.trainer.precision, resumed.model.dtype) == ("bf16", "bfloat16")


def test_a_bad_trainer_section_is_reported_as_such(hardware):
    hardware(True)
    with pytest.raises(ValueError, match="trainer.lr"):
        RunConfig.model_validate({"trainer": {"lr": -1}})
    with pytest.raises(ValueError, match="trainer.ranks"):
        RunConfig.model_validate({"trainer": {"ranks": "two"}})


def test_the_rule():
    assert auto_precision(0, 1, "stochastic", native_bf16=True) == "bf16"
    assert auto_precision(0, 1, "stochastic", native_bf16=False) == "fp32"
    assert auto_precision(3, 1, "stochastic", native_bf16=True) == "fp32"
    assert auto_precision(1, 4, "stochastic", native_bf16=True) == "fp32"
    assert auto_precision(1, 1, "stochastic", native_bf16=True) == "bf16"
    assert [auto_engine_dtype(p) for p in ("bf16", "fp32", "autocast-bf16")] == [
        "bfloat16",
        "float32",
        "float32",
    ]
