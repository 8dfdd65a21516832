"""Retrieved calibration memory: what the judge is shown about a candidate."""

from types import SimpleNamespace

import pytest

from metis_core.config_loading import load_config
from metis_core.memory import PastOutcome, jaccard, retrieve, words
from metis_core.stages.curriculum import history
from metis_core.store.outcomes import OutcomeStore


def past(pid, prompt, task, difficulty, step, variance, domain="math"):
    return PastOutcome(pid, prompt, task, difficulty, domain, step, variance)


CANDIDATE = {
    "prompt_id": "c",
    "prompt": "What is 12 + 30 + 7?",
    "task": "chain_sum",
    "difficulty": "hard",
    "domain": "math",
}


def test_jaccard_of_word_sets():
    assert jaccard(words("What is 1 + 2?"), words("what is 1 + 3")) == pytest.approx(3 / 5)
    assert jaccard(words(""), words("")) == 0.0


def test_own_history_first_then_task_and_difficulty_then_similar_text():
    history_ = [
        past("x1", "What is 12 + 30 + 8?", "chain_sum", "easy", 5, 0.0),  # similar text, other diff
        past("x2", "Sort these words", "word_sort", "hard", 6, 0.25),  # other task
        past("x3", "Compute 99 + 1 + 5", "chain_sum", "hard", 2, 0.19),  # same task and difficulty
        past("c", "What is 12 + 30 + 7?", "chain_sum", "hard", 1, 0.09),  # the candidate itself
        past("x4", "Compute 3 + 4 + 5", "chain_sum", "hard", 4, 0.0),  # same, newer than x3
    ]
    memory = retrieve(CANDIDATE, history_, k=4)
    # most relevant last, next to the candidate
    assert [e.variance for e in reversed(memory)] == [0.09, 0.0, 0.19, 0.0]  # x4 is newer than x3
    assert memory[-1].prompt == CANDIDATE["prompt"]
    assert memory[0].prompt == "What is 12 + 30 + 8?"  # same task beats another task
    assert "Sort these words" not in [e.prompt for e in memory]


def test_text_similarity_ranks_within_the_same_task_and_recency_breaks_ties():
    history_ = [
        past("a", "Compute 3 + 4 + 5", "chain_sum", "hard", 9, 0.0),
        past("b", "What is 12 + 30 + 9?", "chain_sum", "hard", 1, 0.25),
        past("d", "What is 12 + 30 + 9?", "chain_sum", "hard", 3, 0.16),
    ]
    memory = retrieve(CANDIDATE, history_, k=2)
    assert [e.variance for e in memory] == [0.25, 0.16]  # both most similar; newest last


def test_own_outcomes_newest_first_and_small_histories():
    history_ = [past("c", "q", "chain_sum", "hard", s, s / 100) for s in range(5)]
    assert [e.variance for e in retrieve(CANDIDATE, history_, k=2)] == [0.03, 0.04]
    assert retrieve(CANDIDATE, history_[:1], k=3) == retrieve(CANDIDATE, history_[:1], k=1)
    assert retrieve(CANDIDATE, history_, k=0) == []
    assert retrieve(CANDIDATE, [], k=3) == []


def _record(store, step, pid, rewards):
    store.record_outcomes(
        [
            {"run_id": "r", "step": step, "prompt_id": pid, "sample": i, "reward": r}
            for i, r in enumerate(rewards)
        ]
    )


def test_history_retrieves_from_this_runs_training_outcomes_only(tmp_path):
    store = OutcomeStore(tmp_path / "h.duckdb")
    train = [
        {"prompt_id": f"t{i}", "prompt": f"What is {i} + 1?", "task": "add", "difficulty": "easy"}
        for i in range(3)
    ] + [{"prompt_id": "s", "prompt": "Sort b a", "task": "sort", "difficulty": "easy"}]
    heldout = {"prompt_id": "h0", "prompt": "What is 7 + 7?", "task": "add", "difficulty": "easy"}
    for row in train + [heldout]:
        row["domain"] = "math"
    store.add_prompts(train + [heldout])
    _record(store, 0, "t0", [1, 0])
    _record(store, 0, "s", [1, 1])
    _record(store, 1, "t0", [1, 1])
    _record(store, 1, "h0", [1, 0])  # a held-out prompt that reached the history must not leak
    store.record_outcomes(  # nor may another run's outcomes
        [{"run_id": "other", "step": 0, "prompt_id": "t2", "sample": 0, "reward": 1.0}]
    )
    cfg = load_config(None, ["judge.memory=retrieved", "judge.k_examples=3"])
    run = SimpleNamespace(cfg=cfg, store=store, run_id="r", rows=lambda split: train)
    memory = history(run, 2, [train[0], train[1]])
    shown = {pid: [(e.prompt, e.variance) for e in m] for pid, m in memory.items()}
    # t0's own outcomes first (newest last in the prompt), then the other task
    assert shown["t0"] == [("Sort b a", 0.0), ("What is 0 + 1?", 0.25), ("What is 0 + 1?", 0.0)]
    # t1 has no outcomes of its own: same task and difficulty (t0, newest last), then the rest;
    # never the held-out h0 (same task, would rank above "Sort") or the other run's t2
    assert shown["t1"] == shown["t0"]
    # a memory at step 1 sees only step 0
    assert [e.variance for e in history(run, 1, [train[0]])["t0"]] == [0.0, 0.25]
