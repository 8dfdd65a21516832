"""A mixed pool (arithmetic + code + function calling) through the real stack on a tiny Llama,
then `metis eval` (the metis-eval Prefect flow) on its checkpoint and on a bare model folder."""

import json
import sqlite3

import duckdb
import pytest
import yaml

from tests.conftest import mlflow_run, only_run_dir, run_metis

pytestmark = pytest.mark.integration

MIXED = {
    "steps": 2,
    "checkpoint_every": 1,
    "model": {"dtype": "float32"},
    "data": {
        "tasks": [
            {
                "source": "reasoning_gym",
                "name": "chain_sum",
                "size": 24,
                "params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
            },
            {"source": "code", "name": "procedural", "size": 24, "params": {"difficulty": 1}},
            {"source": "bfcl", "name": "live_simple", "size": 24},
        ],
        "domain_weights": {"math": 1, "code": 1, "function_calling": 1},
    },
    "curriculum": {"batch_prompts": 3, "pool_multiplier": 2},
    "rollout": {"n": 2},
    "eval": {"every": 1, "max_prompts": 6, "samples": 2, "audit_prompts": 6},
    "trainer": {"micro_batch_size": 6},
    # the retrieved memory and expected-value scoring (the defaults) across domains; the paper's
    # recent memory and sampled scores run in test_train_flow's tiny run
    "judge": {"k_examples": 2, "memory": "retrieved", "scoring": "expected"},
}


@pytest.fixture(scope="module")
def mixed(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    out = tmp / "runs"
    config = tmp / "mixed.yaml"
    config.write_text(
        yaml.safe_dump(
            {**MIXED, "output_dir": str(out), "model": {**MIXED["model"], "path": str(tiny_model)}}
        )
    )
    run_metis(tmp, ["train", "--config", str(config)])
    return {"tmp": tmp, "out": out, "run_dir": only_run_dir(out), "model": tiny_model}


def test_every_domain_is_drawn_and_recorded(mixed):
    con = duckdb.connect(str(mixed["run_dir"] / "history.duckdb"), read_only=True)
    pool = mixed["run_dir"] / "pool.parquet"
    try:
        # every candidate is judged (and recorded); the pool file knows its domain
        candidates = con.execute(
            f"SELECT j.step, p.domain, count(*) FROM judgments j JOIN '{pool}' p USING (prompt_id) "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        outcomes = con.execute("SELECT count(*) FROM outcomes").fetchone()[0]
    finally:
        con.close()
    # equal weights, m*B = 6 candidates: two of each domain every step
    assert candidates == [
        (step, domain, 2) for step in (0, 1) for domain in ("code", "function_calling", "math")
    ]
    assert outcomes == 2 * 3 * 2  # steps * B * n


def test_expected_v_hat_ranks_the_candidates(mixed):
    for step in (0, 1):
        steps = mixed["run_dir"] / "steps" / f"{step:06d}"
        judged = json.loads((steps / "judgments.json").read_text())
        selection = json.loads((steps / "selection.json").read_text())
        expected = {c["prompt_id"]: c["v_hat_expected"] for c in judged["candidates"]}
        assert all(0.0 <= v <= 0.25 for v in expected.values())
        if not selection["warmup"]:
            chosen = sorted(expected[p] for p in selection["prompt_ids"])
            assert chosen == sorted(expected.values())[-len(chosen) :]
    # step 1 judged with a memory retrieved from step 0's outcomes
    assert json.loads((steps / "judgments.json").read_text())["memory_size"] == 2


def test_judgments_cost_their_digits_and_the_scoring_requests(mixed):
    con = duckdb.connect(str(mixed["run_dir"] / "history.duckdb"), read_only=True)
    try:
        decoded, judged = con.execute("SELECT sum(tokens), count(*) FROM judgments").fetchone()
        longest = con.execute("SELECT max(tokens) FROM judgments").fetchone()[0]
    finally:
        con.close()
    assert longest <= 4  # two digits, `}` and an end token: `\boxed{0.` is in the prompt
    client, run_id = mlflow_run(mixed["run_dir"])
    charged = client.get_run(run_id).data.metrics["cost/judgment_tokens"]
    # 2 one-token expected-scoring requests each: the sampled judgment's own top log-probs hold
    # the tenths digit's distribution and the hundredths digit's after the drawn tenths digit
    assert charged == decoded + 2 * judged


def test_per_domain_metrics_in_mlflow(mixed):
    client, run_id = mlflow_run(mixed["run_dir"])
    metrics = client.get_run(run_id).data.metrics
    for domain in ("math", "code", "function_calling"):
        for key in (
            f"cost/{domain}/rollouts",
            f"cost/{domain}/generated_tokens",
            f"eval/{domain}/avg_at_2",
            f"eval/{domain}/pass_at_1",
            f"eval/{domain}/pass_at_2",
        ):
            assert key in metrics, key
    assert sum(metrics[f"cost/{d}/rollouts"] for d in ("math", "code", "function_calling")) == 12
    # the domains that got rollouts have their reward, waste and judge metrics
    trained = [d for d in ("math", "code", "function_calling") if metrics[f"cost/{d}/rollouts"]]
    for domain in trained:
        for key in (
            "train/{}/reward_mean",
            "train/{}/zero_variance_fraction",
            "judge/selected/{}/mae",
        ):
            assert key.format(domain) in metrics, key.format(domain)
    # the judge audit, overall and for each domain its random sample drew
    assert "audit/top_b_nonzero_share" in metrics
    assert any(f"audit/{d}/nonzero_share" in metrics for d in ("math", "code", "function_calling"))
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/training_curves.png" in plots


def test_eval_logs_into_the_training_run(mixed):
    done = run_metis(
        mixed["tmp"],
        [
            "eval",
            "--checkpoint",
            str(mixed["run_dir"]),
            "--benchmarks",
            "humaneval",
            "bfcl:simple_python",
            "heldout",
            "--samples",
            "2",
            "--max-prompts",
            "3",
        ],
    )
    (results,) = (mixed["run_dir"] / "evals").iterdir()
    table = (results / "results.md").read_text()
    for name in ("humaneval", "bfcl:simple_python", "heldout"):
        assert f"| {name} |" in table
    assert "results in" in done.stdout
    client, run_id = mlflow_run(mixed["run_dir"])
    history = client.get_metric_history(run_id, "bench/humaneval/pass_at_1")
    assert [m.step for m in history] == [1]  # the checkpoint's step
    assert client.get_run(run_id).info.status == "FINISHED"  # untouched by the evaluation
    con = sqlite3.connect(mixed["tmp"] / "prefect" / "prefect.db")
    try:
        flows = {row[0] for row in con.execute("SELECT name FROM flow")}
        tasks = {row[0] for row in con.execute("SELECT name FROM task_run")}
    finally:
        con.close()
    assert "metis-eval" in flows
    assert {"benchmark-humaneval", "benchmark-heldout"} <= tasks
    assert any(t.startswith("log-results") for t in tasks)


def test_eval_of_a_bare_model_gets_its_own_run(mixed):
    out = mixed["tmp"] / "bare"
    run_metis(
        mixed["tmp"],
        [
            "eval",
            "--checkpoint",
            str(mixed["model"]),
            "--benchmarks",
            "bfcl:parallel",
            "--samples",
            "2",
            "--max-prompts",
            "2",
            "--output-dir",
            str(out),
            "--set",
            f"output_dir={mixed['out']}",
        ],
    )
    (results,) = out.iterdir()
    assert (results / "results.csv").read_text().startswith("benchmark,prompts,left_out,k")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{mixed['out'].resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("metis-eval")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and "bench/bfcl_parallel/avg_at_2" in run.data.metrics


def test_bad_benchmark_is_a_clear_error(mixed):
    import subprocess

    from tests.conftest import REPO, metis_command, metis_env

    done = subprocess.run(
        metis_command("eval", "--checkpoint", str(mixed["model"]), "--benchmarks", "mmlu"),
        cwd=REPO,
        env=metis_env(mixed["tmp"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2 and "unknown benchmark 'mmlu'" in done.stderr
