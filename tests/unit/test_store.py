"""The outcome history on a real DuckDB file."""

import duckdb
import pytest

from metis_core.store.outcomes import OutcomeStore


def outcome_rows(run, step, prompt, rewards):
    return [
        {
            "run_id": run,
            "step": step,
            "prompt_id": prompt,
            "sample": i,
            "reward": r,
            "completion": str(r),
            "completion_tokens": 1,
            "reason": None,
        }
        for i, r in enumerate(rewards)
    ]


@pytest.fixture
def store(tmp_path):
    s = OutcomeStore(tmp_path / "history.duckdb")
    s.add_prompts(
        [
            {"prompt_id": p, "prompt": f"text {p}", "answer": "1", "task": "t", "difficulty": "d"}
            for p in ("a", "b", "c")
        ]
    )
    return s


def test_replayed_writes_replace_instead_of_duplicating(store):
    store.record_outcomes(outcome_rows("r", 0, "a", [1, 0, 1, 0]))
    store.record_outcomes(outcome_rows("r", 0, "a", [1, 1, 1, 1]))  # a replay of step 0
    assert store.count("outcomes", "r") == 4
    stats = store.prompt_stats("r")
    assert stats.loc[0, "mean_reward"] == 1.0
    store.record_judgments(
        [
            {
                "run_id": "r",
                "step": 0,
                "prompt_id": "a",
                "v_hat": 0.1,
                "parsed": True,
                "text": "x",
                "tokens": 3,
                "selected": True,
            }
        ]
        * 2
    )
    assert store.count("judgments", "r", step=0) == 1


def test_a_replayed_step_that_chose_other_prompts_leaves_no_stale_rows(store):
    def judged(step, prompt):
        return {"run_id": "r", "step": step, "prompt_id": prompt, "v_hat": 0.1, "parsed": True,
                "text": "x", "tokens": 3, "selected": True}  # fmt: skip

    store.replace_step("r", 0, outcome_rows("r", 0, "a", [1, 0]), [judged(0, "a")])
    store.replace_step("r", 1, outcome_rows("r", 1, "a", [1, 1]), [judged(1, "a")])
    # step 1 replayed after a crash: another prompt chosen
    counts = store.replace_step("r", 1, outcome_rows("r", 1, "b", [0, 1]), [judged(1, "b")])
    assert counts == {"outcomes": 2, "judgments": 1}
    assert store.prompt_stats("r").set_index("prompt_id")["steps"].to_dict() == {"a": 1, "b": 1}
    assert store.count("outcomes", "r", step=0) == 2 and store.count("judgments", "r", step=1) == 1
    with pytest.raises(duckdb.ConstraintException):  # a failed write leaves the step as it was
        store.replace_step("r", 1, outcome_rows("r", 1, "c", [1, 1]) * 2, [judged(1, "c")])
    assert store.prompt_stats("r").set_index("prompt_id")["steps"].to_dict() == {"a": 1, "b": 1}


def test_recent_variances_newest_first_per_run(store):
    store.record_outcomes(outcome_rows("r", 0, "a", [1, 0]))  # v = 0.25
    store.record_outcomes(outcome_rows("r", 1, "b", [1, 1]))  # v = 0
    store.record_outcomes(outcome_rows("r", 2, "c", [0, 0]))  # v = 0, but at the step asked for
    store.record_outcomes(outcome_rows("other", 1, "c", [1, 0]))
    recent = store.recent_variances("r", before_step=2, limit=10)
    assert [(p, v) for p, v, _ in recent] == [("text b", 0.0), ("text a", 0.25)]
    assert len(store.recent_variances("r", before_step=3, limit=1)) == 1


def test_prompt_stats_use_the_last_n_rewards(store):
    store.record_outcomes(outcome_rows("r", 0, "a", [0, 0]))
    store.record_outcomes(outcome_rows("r", 1, "a", [1, 1]))
    stats = store.prompt_stats("r", last_n=2).set_index("prompt_id")
    assert stats.loc["a", "mean_reward"] == 1.0 and stats.loc["a", "steps"] == 1
    stats = store.prompt_stats("r", last_n=4).set_index("prompt_id")
    assert stats.loc["a", "mean_reward"] == 0.5 and stats.loc["a", "reward_variance"] == 0.25


def test_steps_table_and_unknown_table(store):
    store.record_step("r", 0, {"train/reward_mean": 0.5})
    store.record_step("r", 0, {"train/reward_mean": 0.6})
    assert store.count("steps", "r") == 1
    with pytest.raises(ValueError):
        store.count("prompts; DROP TABLE outcomes", "r")


def test_constant_continuous_rewards_have_zero_variance_in_queries(store):
    store.record_outcomes(outcome_rows("r", 0, "a", [2 / 3] * 8))
    store.record_outcomes(outcome_rows("r", 0, "b", [0.5] * 7 + [0.51]))
    stats = store.prompt_stats("r").set_index("prompt_id")
    assert stats.loc["a", "reward_variance"] == 0.0
    assert stats.loc["b", "reward_variance"] > 0.0
    recent = {prompt: v for prompt, v, _ in store.recent_variances("r", 1, 10)}
    assert recent["text a"] == 0.0
    assert recent["text b"] > 0.0


def test_memory_queries_over_a_window_equal_the_whole_history(tmp_path):
    """The windowed queries (widened until they hold `limit` rows) return what a scan of the
    whole history returns: a long run, a rare domain that forces widening, a limit larger than
    all of it."""
    s = OutcomeStore(tmp_path / "history.duckdb")
    prompts = [f"p{i}" for i in range(40)]
    s.add_prompts(
        [{"prompt_id": p, "prompt": f"text {p}", "answer": "1", "task": f"t{i % 3}",
          "difficulty": "d", "domain": "code" if i == 7 else "math"} for i, p in enumerate(prompts)]
    )  # fmt: skip
    s.record_outcomes(
        [row for step in range(300) for j in range(4)
         for row in outcome_rows("r", step, prompts[(step * 4 + j) % 40],
                                 [(step + j) % 2, int((step * j) % 3 == 0)])]
    )  # fmt: skip

    def full_scan(before, limit, domain=None):
        with s._connect() as con:
            return con.execute(
                """SELECT p.prompt, CASE WHEN var_pop(o.reward) <= 1e-9 THEN 0.0 ELSE var_pop(o.reward) END, o.step
                   FROM outcomes o JOIN prompts p USING (prompt_id)
                   WHERE o.run_id = 'r' AND o.step < ? AND (? IS NULL OR p.domain = ?)
                   GROUP BY o.step, o.prompt_id, p.prompt ORDER BY o.step DESC, o.prompt_id LIMIT ?""",
                [before, domain, domain, limit],
            ).fetchall()  # fmt: skip

    for before, limit, domain in [(300, 8, None), (300, 64, "code"), (250, 5000, None),
                                  (20, 64, "code"), (3, 2, None), (0, 8, None)]:  # fmt: skip
        assert s.recent_variances("r", before, limit, domain) == full_scan(before, limit, domain)
    past = s.past_outcomes("r", 300, 100)
    assert [(p[0], p[5]) for p in past] == [(p, st) for p, st in sorted(
        {(prompts[(st * 4 + j) % 40], st) for st in range(300) for j in range(4)},
        key=lambda x: (-x[1], x[0]))][:100]  # fmt: skip


def test_latest_metric_is_the_newest_step_that_has_it(store):
    store.record_step("r", -1, {"eval/avg_at_4": 0.25, "train/loss": 1.0})
    store.record_step("r", 0, {"train/loss": 0.5})
    store.record_step("r", 7, {"eval/avg_at_4": 0.75, "eval/task/my task:v2": 0.5})
    store.record_step("r", 8, {"train/loss": 0.25})
    store.record_step("other", 9, {"eval/avg_at_4": 0.9})
    assert store.latest_metric("r", "eval/avg_at_4") == 0.75
    assert store.latest_metric("r", "train/loss") == 0.25
    assert store.latest_metric("r", "eval/task/my task:v2") == 0.5  # quoted, not a JSON path
    assert store.latest_metric("r", "eval/pass_at_4") is None
    assert store.latest_metric("nobody", "train/loss") is None
    full = [m["eval/avg_at_4"] for _, m in store.step_metrics("r") if "eval/avg_at_4" in m]
    assert store.latest_metric("r", "eval/avg_at_4") == full[-1]
    # as of an earlier step (the checkpoint a resumed run restarts from)
    assert store.latest_metric("r", "eval/avg_at_4", through_step=6) == 0.25
    assert store.latest_metric("r", "eval/avg_at_4", through_step=7) == 0.75
    assert store.latest_metric("r", "train/loss", through_step=7) == 0.5
    assert store.latest_metric("r", "train/loss", through_step=-2) is None


def test_steps_recorded_as_json_by_older_versions_stay_readable(store):
    import json

    with store._connect() as con:  # what metis wrote before step_values existed
        con.execute(
            "INSERT INTO steps (run_id, step, metrics) VALUES ('r', 0, ?), ('r', 1, ?)",
            [json.dumps({"eval/avg_at_4": 0.25, "n": 3}), json.dumps({"train/loss": 0.5})],
        )
    store.record_step("r", 2, {"train/loss": 0.25, "judge/rho": None, "audit/lift": float("nan")})
    store.record_step("r", 1, {"train/loss": 0.4})  # a replayed step replaces the old one
    got = dict(store.step_metrics("r"))
    assert got[0] == {"eval/avg_at_4": 0.25, "n": 3}
    assert got[1] == {"train/loss": 0.4} and got[2]["train/loss"] == 0.25
    assert got[2]["judge/rho"] is None and got[2]["audit/lift"] != got[2]["audit/lift"]  # NaN
    assert store.latest_metric("r", "eval/avg_at_4") == 0.25
    assert store.latest_metric("r", "train/loss") == 0.25
    assert store.count("steps", "r") == 3
