"""Mixed-domain pools: candidate quotas, per-domain metrics, the calibration memory across domains,
prompt formats per domain, and `metis eval`'s checkpoint and benchmark names."""

import json
from types import SimpleNamespace

import pytest

from metis_core import checkpoints
from metis_core.config_loading import load_config
from metis_core.domains import reward_mode, task_chat
from metis_core.evaluation import EvalError, benchmark_rows, metric_prefix, resolve_checkpoint
from metis_core.metrics import accuracy_metrics, spread_over_domains
from metis_core.samplers.base import domain_quota
from metis_core.stages.curriculum import history
from metis_core.store.outcomes import OutcomeStore

MIXED = "configs/mixed.yaml"


def test_quota_follows_weights():
    available = {"math": 300, "code": 100, "function_calling": 100}
    weights = {"math": 0.4, "code": 0.3, "function_calling": 0.3}
    assert domain_quota(32, weights, available) == {"math": 13, "code": 10, "function_calling": 9}
    assert sum(domain_quota(7, weights, available).values()) == 7


def test_quota_moves_what_a_small_domain_cannot_give():
    quota = domain_quota(32, {"math": 0.5, "code": 0.5}, {"math": 300, "code": 5, "other": 9})
    assert quota == {"math": 27, "code": 5}  # zero-weight domains give nothing while others can
    assert domain_quota(10, {"math": 1.0}, {"math": 3, "code": 7}) == {"math": 3, "code": 7}
    with pytest.raises(ValueError, match="cannot draw 11"):
        domain_quota(11, {"math": 1.0}, {"math": 3, "code": 7})


def test_spread_over_domains_round_robin():
    rows = [{"domain": "math", "i": i} for i in range(10)] + [{"domain": "code", "i": 0}]
    picked = spread_over_domains(rows, 4)
    assert [r["domain"] for r in picked].count("code") == 1 and len(picked) == 4


def test_accuracy_metrics_per_domain_and_task_by_hand():
    results = [
        {"domain": "code", "task": "humaneval", "scores": [1.0, 0.0, 0.0, 0.0]},
        {"domain": "code", "task": "humaneval", "scores": [0.5, 0.5, 0.5, 0.5]},  # partial credit
        {"domain": "math", "task": "gcd", "scores": [1.0, 1.0, 1.0, 1.0]},
    ]
    m = accuracy_metrics(results, 4, prefix="eval")
    assert m["eval/code/avg_at_4"] == pytest.approx((0.25 + 0.5) / 2)
    # pass@1 counts only full-credit samples: c=1 of n=4 -> 0.25; c=0 -> 0
    assert m["eval/code/pass_at_1"] == pytest.approx(0.125)
    assert m["eval/code/pass_at_4"] == pytest.approx(0.5)
    assert m["eval/math/pass_at_1"] == 1.0 and m["eval/gcd/avg_at_4"] == 1.0
    assert m["eval/pass_at_4"] == pytest.approx(2 / 3)


def test_each_domain_has_its_own_prompt_format():
    cfg = load_config(MIXED)
    math_row = {"domain": "math", "prompt": "1+1?", "metadata": "{}"}
    code_row = {"domain": "code", "prompt": "Write f", "metadata": json.dumps({"prefill": "```py"})}
    fc_row = {"domain": "function_calling", "prompt": "Call it", "metadata": "{}"}
    (msgs, prefill) = task_chat(cfg, math_row)
    assert prefill == "The answer is " and "final answer" in msgs[0]["content"]
    assert task_chat(cfg, code_row)[1] == "```py"  # the row's own prefill wins
    assert task_chat(cfg, fc_row)[1] == "["
    assert reward_mode(cfg, math_row) == "discrete"
    assert reward_mode(cfg, code_row) == "continuous"
    discrete = load_config(MIXED, ["data.domains.code.reward_mode=discrete"])
    assert reward_mode(discrete, code_row) == "discrete"


def _outcomes(step, pid, rewards):
    return [
        {"run_id": "r", "step": step, "prompt_id": pid, "sample": i, "reward": r}
        for i, r in enumerate(rewards)
    ]


def test_recent_memory_prefers_own_domain_and_tops_up(tmp_path):
    store = OutcomeStore(tmp_path / "h.duckdb")
    store.add_prompts(
        [
            {"prompt_id": f"m{i}", "prompt": f"math {i}", "domain": "math", "task": "t"}
            for i in range(4)
        ]
        + [{"prompt_id": "c0", "prompt": "code 0", "domain": "code", "task": "t"}]
    )
    for i, rewards in enumerate([[0, 0], [1, 1], [0, 1], [1, 0]]):
        store.record_outcomes(_outcomes(0, f"m{i}", rewards))
    store.record_outcomes(_outcomes(0, "c0", [0.5, 1.0]))
    cfg = load_config(MIXED, ["judge.k_examples=3", "judge.memory=recent"])
    run = SimpleNamespace(cfg=cfg, store=store, run_id="r")
    rows = [
        {"prompt_id": f"new-{d}", "domain": d, "prompt": "?"}
        for d in ("math", "code", "function_calling")
    ]
    memories = history(run, 1, rows)
    assert set(memories) == {"new-math", "new-code", "new-function_calling"}
    assert all(len(m) == 3 for m in memories.values())
    assert all(e.prompt.startswith("math") for e in memories["new-math"])
    # code has one outcome of its own; the rest is topped up from all domains
    assert memories["new-code"][0].prompt == "code 0"
    assert memories["new-code"][0].variance == pytest.approx(0.0625)
    assert not any(e.prompt == "code 0" for e in memories["new-code"][1:])
    assert history(run, 0, rows) == {r["prompt_id"]: [] for r in rows}


def test_checkpoint_specs(tmp_path):
    assert resolve_checkpoint("embedded:smollm2-135m-instruct").step == -1
    run = tmp_path / "run-1"
    hf = run / "checkpoints" / "step-000011" / "hf"

    def save(folder):
        (folder / "hf").mkdir(parents=True)
        (folder / "hf" / "config.json").write_text("{}")

    checkpoints.write(run / "checkpoints", 11, save)
    (run / "run.json").write_text("{}")
    for spec in (run, run / "checkpoints" / "step-000011", hf):
        ckpt = resolve_checkpoint(str(spec))
        assert (ckpt.model_path, ckpt.step, ckpt.run_dir) == (str(hf), 11, run)
    with pytest.raises(EvalError, match="not an HF model folder"):
        resolve_checkpoint(str(tmp_path / "nothing"))


def test_benchmark_names():
    with pytest.raises(EvalError, match="unknown benchmark 'mmlu'"):
        benchmark_rows("mmlu", limit=1, seed=0)
    with pytest.raises(EvalError, match="needs a run folder"):
        benchmark_rows("heldout", limit=1, seed=0)
    assert metric_prefix("bfcl:simple_python") == "bench/bfcl_simple_python"


def test_mixed_pool_has_every_domain_with_its_scorer():
    from metis_core.data.pool import build_pool

    cfg = load_config(MIXED)
    pool = build_pool(cfg.data, count_tokens=lambda row: len(row["prompt"]) // 4)
    rows = list(pool)
    assert {r["domain"] for r in rows} == {"math", "code", "function_calling"}
    scorers = {(r["domain"], r["reward"]) for r in rows}
    assert scorers == {
        ("math", "reasoning_gym"),
        ("code", "code_tests"),
        ("function_calling", "bfcl_ast"),
    }
    assert len({r["prompt_id"] for r in rows}) == len(rows)
    for domain in ("math", "code", "function_calling"):  # each domain has both splits
        assert {r["split"] for r in rows if r["domain"] == domain} == {"train", "heldout"}
    # the length filter left out long BFCL prompts (about 4 characters a token here)
    assert max(len(r["prompt"]) // 4 for r in rows) <= cfg.data.max_prompt_tokens
    # ... and only those: every live_multiple prompt at or under the limit is in the pool
    from metis_core.domains.function_calling import bfcl_rows

    fits = [
        r for r in bfcl_rows("live_multiple") if len(r["prompt"]) // 4 <= cfg.data.max_prompt_tokens
    ]
    kept = sum(r["task"] == "bfcl_live_multiple" for r in rows)
    assert 0 < kept == len(fits) < 1051
