"""A domain is one module: registering one (tests/toy_domain.py) is all config, pool, rewards,
evaluation and the config reference need to use it."""

import pytest

from metis_core.config_loading import ConfigError, config_reference, load_config
from metis_core.data.pool import build_pool
from metis_core.domains import (
    DomainSpec,
    TaskSource,
    domain_spec,
    domains,
    register_domain,
    registered,
    reward_mode,
    task_chat,
)
from metis_core.evaluation import benchmark_rows, default_benchmarks
from metis_core.rewards import REWARDS, score_completions

TOY_TASKS = "data.tasks=[{source: reverse_words, size: 40, params: {length: 5}}]"


def toy_config(module, *more):
    return load_config(
        None,
        [f"data.domain_modules=[{module}]", TOY_TASKS, "curriculum.batch_prompts=4", *more],
    )


def test_built_in_domains_declare_their_sources_rewards_and_benchmarks():
    assert [d.name for d in domains()] == ["code", "function_calling", "math"]
    sources = {s.name: d.name for d in domains() for s in d.sources}
    assert sources == {
        "code": "code",
        "code_file": "code",
        "humaneval": "code",
        "bfcl": "function_calling",
        "reasoning_gym": "math",
    }
    assert {"code_tests", "bfcl_ast", "reasoning_gym", "math_verify"} <= set(REWARDS)
    assert default_benchmarks() == [
        "humaneval", "bfcl:simple_python", "bfcl:multiple", "bfcl:parallel"
    ]  # fmt: skip
    assert domain_spec("code").needs_sandbox and not domain_spec("math").needs_sandbox


def test_a_toy_domain_registered_from_a_module_runs_through_config_pool_rewards_and_eval(
    toy_domain,
):
    cfg = toy_config(toy_domain, "data.domains.reverse.max_tokens=6")
    assert cfg.domains_in_use() == ["reverse"]
    assert cfg.domain("reverse").max_tokens == 6
    assert cfg.domain("math").max_tokens == 24  # the built-ins keep their settings

    pool = build_pool(cfg.data)
    assert len(pool) == 40 and set(pool["domain"]) == {"reverse"}
    row = dict(pool[0])
    messages, prefill = task_chat(cfg, row)
    assert messages[0]["content"].startswith("Reverse the word") and prefill == ""

    assert reward_mode(cfg, row) == "continuous"
    scores, reasons = score_completions(
        row["reward"], [row["answer"], "zzzzz"], row, reward_mode(cfg, row)
    )
    assert scores[0] == 1.0 and scores[1] < 1.0 and reasons == [None, None]

    rows = benchmark_rows("reverse", limit=6, seed=1)
    assert len(rows) == 6 and all(r["prompt_id"] for r in rows)
    assert default_benchmarks()[-1] == "reverse"
    assert "## data.domains.reverse" in config_reference()

    # the saved config (config.json) reads back in a process that has the module to import
    assert type(cfg).model_validate_json(cfg.to_json()) == cfg


def test_toy_domain_mistakes_fail_at_config_load(toy_domain):
    with pytest.raises(
        ConfigError, match=r"data.tasks\[0\] \(reverse_words: -\): .*knows only `length`"
    ):
        toy_config(toy_domain, "data.tasks=[{source: reverse_words, size: 8, params: {n: 1}}]")
    with pytest.raises(ConfigError, match=r"data.domains.reverse.max_tokens: Input should be"):
        toy_config(toy_domain, "data.domains.reverse.max_tokens=0")
    with pytest.raises(ConfigError, match=r"source 'reverse_words' generates prompts: give `size`"):
        toy_config(toy_domain, "data.tasks=[{source: reverse_words}]")


def test_without_its_module_the_toy_domain_is_unknown():
    with pytest.raises(ConfigError, match=r"unknown source 'reverse_words'"):
        load_config(None, [TOY_TASKS])
    with pytest.raises(ConfigError, match=r"cannot import 'tests.no_such_domain'"):
        load_config(None, ["data.domain_modules=[tests.no_such_domain]"])


def test_registering_refuses_names_already_taken_and_leaves_the_registry_as_it_was():
    from metis_core.domains.math import MathDomain

    def rows(entry, seed):
        return []

    before = [d.name for d in domains()]
    clash = DomainSpec("algebra", MathDomain, "x", (TaskSource("reasoning_gym", rows),))
    with pytest.raises(
        ValueError, match=r"source name\(s\) \['reasoning_gym'\] already registered"
    ):
        register_domain(clash)
    with pytest.raises(ValueError, match=r"reward name\(s\) \['math_verify'\]"):
        register_domain(
            DomainSpec("algebra", MathDomain, "x", (), rewards={"math_verify": lambda c, **_: []})
        )
    assert [d.name for d in domains()] == before

    with registered(DomainSpec("algebra", MathDomain, "x", (TaskSource("algebra_gen", rows),))):
        assert domains()[-1].name == "algebra"
    assert [d.name for d in domains()] == before
