"""The curriculum stages (judge, select) and the update, on in-memory fakes of the ports
(tests/unit/stage_fakes.py); the outcome history is the real DuckDB store in tmp_path. No model,
no vLLM, no DeepSpeed: seconds.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metis_core import ports
from metis_core.judgment import JUDGMENT_PREFIX
from metis_core.run import Run, read_json, write_json
from metis_core.samplers import top_b
from metis_core.stages import curriculum, policy
from tests.conftest import B, M, port_mismatches
from tests.unit.stage_fakes import (
    CharTokenizer,
    FakeEngine,
    FakeTracker,
    FakeTrainer,
    make_run,
    pool_rows,
)


def add_history(run: Run, step: int, prompts: int) -> None:
    """`prompts` earlier problems (not in the pool) with outcomes at `step`, rewards of varied
    spread: enough of them (>= judge.k_examples) calibrate the judge."""
    rows = [
        {"prompt_id": f"h{i}", "prompt": f"Earlier problem {i}", "answer": "0", "task": "t",
         "difficulty": "easy", "domain": "math"}
        for i in range(prompts)
    ]  # fmt: skip
    run.store.add_prompts(rows)
    outcomes = [
        {"run_id": run.run_id, "step": step, "prompt_id": r["prompt_id"], "sample": s,
         "reward": float(s <= i), "completion": "", "completion_tokens": 1, "reason": None}
        for i, r in enumerate(rows)
        for s in range(4)
    ]  # fmt: skip
    run.store.replace_step(run.run_id, step, outcomes, [])


def judge_and_select(run: Run, step: int) -> tuple[list[str], dict[str, Any]]:
    """The candidates' ids (in draw order) and the selection of one iteration's judge + select."""
    memory = curriculum.history(run, step, curriculum.draw_candidates(run, step))
    judgments = curriculum.judge(run, step, memory)
    ids = [c["prompt_id"] for c in read_json(judgments)["candidates"]]
    return ids, read_json(curriculum.select(run, step, judgments))


def uniform_pick(run: Run, step: int, ids: list[str]) -> list[str]:
    """What a uniform allocation chooses: Top-B of equal scores with the select stage's rng."""
    return [ids[i] for i in top_b([0.0] * len(ids), B, run.rng(step, "select"))]


def test_the_fakes_satisfy_the_ports():
    for fake, port in [
        (FakeEngine, ports.Engine),
        (FakeTrainer, ports.Trainer),
        (FakeTracker, ports.Tracker),
        (CharTokenizer, ports.Tokenizer),
    ]:
        assert port_mismatches(fake, port) == []


def favourites(run: Run, step: int) -> tuple[list[str], FakeEngine]:
    """An engine that judges two of this step's candidates 0.25 and the rest 0.00, and which two;
    picked among the candidates a uniform draw does not choose, so the two allocations differ."""
    ids = [c["prompt_id"] for c in curriculum.draw_candidates(run, step)]
    uniform = uniform_pick(run, step, ids)
    liked = [i for i in ids if i not in uniform][:B]
    by_id = {r["prompt_id"]: r["prompt"] for r in pool_rows()}
    return liked, FakeEngine({by_id[i]: "25}" for i in liked})


def test_after_warmup_the_judgments_choose(tmp_path):
    run = make_run(tmp_path)
    add_history(run, 0, prompts=3)
    liked, run.engine = favourites(run, 1)
    ids, selection = judge_and_select(run, 1)
    assert len(ids) == B * M
    assert not selection["warmup"]
    assert sorted(selection["prompt_ids"]) == sorted(liked)
    (call,) = run.engine.calls  # one engine call judges every candidate, constrained
    assert call["prompts"] == B * M and call["regex"] == curriculum.judgment_regex(run.cfg)


def test_warmup_steps_allocate_uniformly_but_still_judge(tmp_path):
    """Before curriculum.warmup_steps (1 in tiny_overrides' defaults) the judge's scores are not
    used, even with a full calibration memory; the candidates are judged all the same."""
    run = make_run(tmp_path, extra=["curriculum.warmup_steps=2"])
    add_history(run, 0, prompts=3)
    liked, run.engine = favourites(run, 1)
    ids, selection = judge_and_select(run, 1)
    assert selection["warmup"]
    assert selection["prompt_ids"] == uniform_pick(run, 1, ids)
    assert not set(liked) & set(selection["prompt_ids"])
    judged = read_json(run.step_file(1, "judgments"))["candidates"]
    assert sorted(c["prompt_id"] for c in judged if c["v_hat"] == 0.25) == sorted(liked)


def test_a_memory_shorter_than_k_keeps_the_allocation_uniform(tmp_path):
    """Past the warm-up steps, a judging sampler still allocates uniformly while its calibration
    memory holds fewer than judge.k_examples (3) outcomes: the judge has nothing to calibrate on."""
    run = make_run(tmp_path)
    add_history(run, 0, prompts=2)
    liked, run.engine = favourites(run, 1)
    ids, selection = judge_and_select(run, 1)
    assert read_json(run.step_file(1, "judgments"))["memory_size"] == 2
    assert selection["warmup"]
    assert selection["prompt_ids"] == uniform_pick(run, 1, ids)


@pytest.mark.parametrize("fallback", [0.125, 0.0])
def test_an_unparsable_judgment_scores_parse_failure_score(tmp_path, fallback):
    """A judgment that does not parse keeps v_hat None in judgments.json, and the sampler scores
    its candidate judge.parse_failure_score: above a 0.10 judgment at 0.125, below it at 0."""
    run = make_run(tmp_path, extra=[f"judge.parse_failure_score={fallback}"])
    add_history(run, 0, prompts=3)
    ids = [c["prompt_id"] for c in curriculum.draw_candidates(run, 1)]
    top, garbled, low = ids[0], ids[1], ids[2]
    by_id = {r["prompt_id"]: r["prompt"] for r in pool_rows()}
    run.engine = FakeEngine({by_id[top]: "25}", by_id[garbled]: "x}", by_id[low]: "10}"})
    _, selection = judge_and_select(run, 1)
    judged = {c["prompt_id"]: c for c in read_json(run.step_file(1, "judgments"))["candidates"]}
    assert judged[garbled]["v_hat"] is None
    assert judged[garbled]["text"] == JUDGMENT_PREFIX + "x}"
    assert judged[low]["v_hat"] == pytest.approx(0.10)
    second = garbled if fallback > 0.10 else low
    assert sorted(selection["prompt_ids"]) == sorted([top, second])


def test_the_uniform_sampler_asks_no_judgments_and_needs_no_memory(tmp_path):
    """Uniform is not a judging sampler: the judge stage makes no engine call and writes only the
    candidates' ids, and past the warm-up steps an empty history does not hold it in warm-up."""
    run = make_run(tmp_path, extra=["curriculum.sampler=uniform"])
    ids, selection = judge_and_select(run, 1)
    assert run.engine.calls == []
    assert read_json(run.step_file(1, "judgments"))["candidates"] == [{"prompt_id": i} for i in ids]
    assert not selection["warmup"]
    assert selection["prompt_ids"] == uniform_pick(run, 1, ids)
    assert selection["reserve"] == [] and selection["features"] == {}


def write_step_outcomes(run: Run, step: int, prompt_ids: list[str]) -> tuple[Path, Path]:
    """rollouts.json and verified.json as the rollout and verify stages write them: two
    completions per selected prompt, one right and one wrong (judge reward 0.5 each)."""
    rollouts = [
        {"prompt_id": p, "prompt_token_ids": [1, 2, 3],
         "completions": [{"token_ids": [4, 5], "text": "7", "logprobs": [-0.5, -0.5]}] * 2}
        for p in prompt_ids
    ]  # fmt: skip
    verified = [
        {"prompt_id": p, "rewards": [1.0, 0.0], "advantages": [1.0, -1.0], "judge_reward": 0.5}
        for p in prompt_ids
    ]
    return (
        write_json(run.step_file(step, "rollouts"), rollouts),
        write_json(run.step_file(step, "verified"), verified),
    )


@pytest.mark.parametrize("lam", [0.5, 0.0])
def test_lambda_zero_selects_by_judgment_but_trains_no_judge(tmp_path, lam):
    """judge.lam weighs the judge's loss. At 0 the judgments still choose the prompts (judging
    is the curriculum), but the update trains the task loss alone: the trainer gets no judgment
    batch, the judge baseline does not move, and no judge metrics or judge tokens are counted."""
    run = make_run(tmp_path, extra=[f"judge.lam={lam}"])
    add_history(run, 0, prompts=3)
    liked, run.engine = favourites(run, 1)
    _, selection = judge_and_select(run, 1)
    assert sorted(selection["prompt_ids"]) == sorted(liked)
    rollouts, verified = write_step_outcomes(run, 1, selection["prompt_ids"])
    metrics = policy.update(run, 1, rollouts, verified, run.step_file(1, "judgments"))
    ((task, judgments, passed_lam),) = run.trainer.steps
    assert passed_lam == lam
    assert len(task.response_ids) == B * 2
    rollout_tokens = B * 2 * (3 + 2)
    if lam == 0:
        assert judgments is None
        assert "judge/reward_mean" not in metrics
        assert run.baseline.value is None
        assert run.totals["trainer_tokens"] == rollout_tokens
    else:
        assert judgments is not None and judgments.rewards == [0.5] * B
        assert metrics["judge/reward_mean"] == 0.5
        assert run.baseline.value == 0.5
        assert run.totals["trainer_tokens"] > rollout_tokens


def test_a_resumed_run_registers_the_checkpoint_it_restarts_from(tmp_path):
    """On resume the restored checkpoint's export goes to the tracker (which finds a registered
    one instead of adding it again), with the held-out accuracy as of its step, not of steps
    recorded after it and about to be replayed."""
    run = make_run(tmp_path)
    folder = tmp_path / "runs" / "r" / "checkpoints" / "step-000003"
    (folder / "hf").mkdir(parents=True)
    (folder / "hf" / "config.json").write_text("{}")
    key = f"eval/avg_at_{run.cfg.eval.samples}"
    run.store.record_step("r", 3, {key: 0.25})
    run.store.record_step("r", 5, {key: 0.75})  # recorded before the kill, replayed after
    accuracies = []
    register = run.tracker.register_checkpoint

    def recording(hf_dir, step, run_id, accuracy, keep=0):
        accuracies.append((step, accuracy))
        return register(hf_dir, step, run_id, accuracy, keep)

    run.tracker.register_checkpoint = recording
    policy.register_restored(run, 3, folder)
    assert run.tracker.logged[-1] == ("model", str((folder / "hf").resolve()))
    assert accuracies == [(3, 0.25)]
    # no export (a checkpoint written without one), or registration off: nothing to register
    policy.register_restored(run, 3, tmp_path / "elsewhere")
    off = make_run(tmp_path / "off", extra=["register_checkpoints=false"])
    policy.register_restored(off, 3, folder)
    assert accuracies == [(3, 0.25)]


@pytest.mark.parametrize("engine_dtype", ["float32", "bfloat16"])
def test_the_sync_sends_the_engine_what_the_trainer_makes_for_its_dtype(tmp_path, engine_dtype):
    """The sync asks the trainer for the weights of the engine's dtype at this step (a bf16
    engine's are rounded stochastically, tests/unit/test_bf16_rounding.py) and loads them."""
    received: list[tuple[str, Any]] = []
    asked: list[tuple[str, int]] = []

    class Recording(FakeEngine):
        def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
            received.extend(named_tensors)

    run = make_run(tmp_path, extra=[f"model.dtype={engine_dtype}"], engine=Recording())

    def engine_weights(dtype: str, step: int) -> Iterator[tuple[str, Any]]:
        asked.append((dtype, step))
        yield ("w", f"w for {dtype}")

    run.trainer.engine_weights = engine_weights  # type: ignore[method-assign]
    policy.sync(run, step=2)
    assert asked == [(engine_dtype, 2)]
    assert received == [("w", f"w for {engine_dtype}")]
