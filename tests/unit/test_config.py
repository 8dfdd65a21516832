import pytest

from metis_core.config import RunConfig
from metis_core.config_loading import ConfigError, describe_changes, flat_params, load_config


def test_defaults_validate():
    cfg = load_config()
    assert cfg.judge.k_examples == 3 and cfg.judge.lam == 0.01
    assert isinstance(cfg, RunConfig)


def test_shipped_default_yaml_loads():
    cfg = load_config("configs/default.yaml")
    assert cfg.curriculum.sampler == "metis"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("curriculum.batch_prompts=100000", "larger than the training pool"),
        ("judge.lam=-1", "judge.lam"),
        ("judge.k_examples=-1", "judge.k_examples"),
        ("judge.lamda=0.1", "unknown key"),
        ("nonsense=1", "unknown key"),
        ("curriculum.pool_multiplier=1000", "exceeds"),
        ("trainer.zero_stage=5", "trainer.zero_stage"),
        ("trainer.ranks=0", "trainer.ranks"),
        ("trainer.ranks=1000", "larger than curriculum.batch_prompts"),
        ("data.domain_weights={code: 1}", "no entry in data.tasks is of that domain"),
        ("data.domain_weights={math: -1}", "must be >= 0"),
        ("data.domains.math.max_tokens=1000", "model.max_model_len"),
        ("data.tasks=[{source: code, name: procedural}]", "give `size`"),
        ("data.tasks=[{source: bfcl}]", "needs `name`"),
        ("data.tasks=[{source: pypi, name: x}]", "data.tasks.0.source"),
    ],
)
def test_bad_values_fail_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_overrides_parse_yaml_values():
    cfg = load_config(
        overrides=[
            "rollout.n=4",
            "data.domains.math.stop=['x','y']",
            "data.domains.code.max_tokens=64",
            "judge.constrained=false",
            "judge.scoring=sampled",
        ]
    )
    assert cfg.rollout.n == 4 and cfg.data.domains["math"].stop == ["x", "y"]
    assert cfg.judge.constrained is False
    # expected-value scoring reads the constrained answers' distribution: it needs the constraint
    with pytest.raises(ConfigError, match="judge.scoring=expected needs judge.constrained=true"):
        load_config(overrides=["judge.constrained=false"])
    # a partial override keeps the rest of that domain's own defaults
    assert cfg.data.domains["code"].max_tokens == 64 and "```" in cfg.data.domains["code"].stop


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["rollout.n"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_flat_params_cover_every_section():
    params = flat_params(load_config())
    assert params["judge.lam"] == "0.01" and params["curriculum.sampler"] == "metis"


def test_docs_config_reference_is_current():
    from pathlib import Path

    from metis_core.config_loading import config_reference

    doc = Path(__file__).resolve().parents[2] / "docs" / "configs.md"
    assert doc.read_text().strip() == config_reference().strip(), (
        "regenerate: metis config --reference > docs/configs.md"
    )


def test_every_field_has_a_docstring():
    from metis_core import config as c
    from metis_core.domains import domains

    sections = [
        c.RunConfig,
        c.ModelConfig,
        c.TaskSpec,
        c.DataConfig,
        *(d.settings for d in domains()),
        c.RolloutConfig,
        c.JudgeConfig,
        c.CurriculumConfig,
        c.TrainerConfig,
        c.EvalConfig,
    ]
    missing = [
        f"{m.__name__}.{n}"
        for m in sections
        for n, f in m.model_fields.items()
        if not f.description
    ]
    assert not missing


def test_every_shipped_config_validates():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        load_config(path)


def test_cli_refuses_overrides_on_resume(capsys):
    from flows.cli import main

    assert main(["train", "--resume", "runs/x", "--set", "steps=3"]) == 2
    assert "--resume continues with the run's saved config" in capsys.readouterr().err


def test_a_resumed_run_starts_from_its_saved_config_and_folder(tmp_path, monkeypatch):
    """`--resume RUN_DIR` readies what the run's own config needs (a run whose engine has its own
    process does not import vLLM here), with the services of the folder the run is in."""
    from flows import cli

    run_dir = tmp_path / "elsewhere" / "a-run"
    run_dir.mkdir(parents=True)
    saved = load_config(None, ["model.engine=separate"])  # output_dir "runs", not where it is
    (run_dir / "config.json").write_text(saved.to_json())
    seen: dict[str, str] = {}
    from flows import services

    monkeypatch.setattr(
        services, "service_environment", lambda home: seen.update(services=home) or {}
    )
    monkeypatch.setattr(cli, "prefect_environment", lambda home: seen.update(prefect=home))
    monkeypatch.setattr(cli, "start_temporary_server", lambda: lambda: None)

    def ready(cfg, server_ready):
        seen["engine"] = cfg.model.engine
        raise SystemExit(7)

    monkeypatch.setattr(cli, "_ready_to_run", ready)
    with pytest.raises(SystemExit):
        cli.main(["train", "--resume", str(run_dir)])
    home = str(run_dir.parent.resolve())
    assert seen == {"services": home, "prefect": home, "engine": "separate"}


def test_cli_reports_bad_config_without_a_traceback(capsys):
    from flows.cli import main

    assert main(["config", "--set", "judge.lam=-1"]) == 2
    assert "judge.lam" in capsys.readouterr().err


def test_ranks_take_zero_stages_that_reduce_once_per_step():
    assert load_config(overrides=["trainer.ranks=2", "trainer.zero_stage=1"]).trainer.ranks == 2
    assert load_config(overrides=["trainer.ranks=1", "trainer.zero_stage=3"]).trainer.ranks == 1
    with pytest.raises(ConfigError, match="zero_stage 0 or 1"):
        load_config(overrides=["trainer.ranks=2", "trainer.zero_stage=2"])


def test_the_default_gap_limit_is_loose_when_either_side_computes_in_bf16():
    from metis_core.config import TrainerConfig

    assert TrainerConfig(precision="fp32").logprob_gap_limit("float32") == 0.01
    assert TrainerConfig(precision="fp32").logprob_gap_limit("bfloat16") == 0.3
    assert TrainerConfig(precision="bf16").logprob_gap_limit("float32") == 0.3
    assert TrainerConfig(precision="autocast-bf16").logprob_gap_limit("float32") == 0.3
    assert (
        TrainerConfig(precision="bf16", max_logprob_gap=0.05).logprob_gap_limit("float32") == 0.05
    )


def test_a_long_list_of_changed_settings_says_how_many_more():
    """The refusal to continue a run (or a comparison) of another config names what differs: the
    first six settings, then how many more, never a silently cut list."""
    base = RunConfig()
    assert describe_changes(base, RunConfig()) == ""
    one = RunConfig.model_validate({"seed": 3})
    assert describe_changes(base, one) == "seed differ"
    many = RunConfig.model_validate(
        {"seed": 3, "steps": 5, "name": "other", "rollout": {"n": 2, "temperature": 0.5},
         "curriculum": {"batch_prompts": 2, "pool_multiplier": 2}, "judge": {"lam": 0.5}}
    )  # fmt: skip
    described = describe_changes(base, many)
    assert described.endswith(" and 2 more differ"), described
    assert described.count(", ") == 5 and described.startswith("curriculum.batch_prompts")


def test_one_section_loads_alone_with_errors_by_its_full_key():
    from metis_core.config import TrainerConfig
    from metis_core.config_loading import load_section

    assert load_section(TrainerConfig, "trainer", ["lr=2e-5", "precision=fp32"]).lr == 2e-5
    with pytest.raises(ConfigError, match=r"trainer\.precision: Input should be"):
        load_section(TrainerConfig, "trainer", ["precision=fp8"])
    with pytest.raises(ConfigError, match=r"trainer\.lrr: unknown key"):
        load_section(TrainerConfig, "trainer", ["lrr=1"])
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_section(TrainerConfig, "trainer", ["lr"])
