"""The curriculum stages (judge, select) and the update, on in-memory fakes of the ports.

The engine answers each judgment prompt with a canned judgment chosen by the candidate's problem
text, the trainer records what it was asked to train, the tracker records what it was told; the
outcome history is the real DuckDB store in tmp_path. No model, no vLLM, no DeepSpeed: seconds.
"""

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

from metis_core import ports
from metis_core.algorithms import MovingAverageBaseline
from metis_core.config_loading import load_config
from metis_core.judgment import JUDGMENT_PREFIX
from metis_core.ports import Completion, JudgmentBatch, RolloutBatch
from metis_core.rounding import engine_weights
from metis_core.run import Run, new_sampler, read_json, write_json
from metis_core.samplers import top_b
from metis_core.stages import curriculum, policy
from metis_core.store.outcomes import OutcomeStore
from tests.conftest import B, M, port_mismatches, tiny_overrides

POOL = 10  # training prompts; m*B = 6 of them are candidates at each step


class CharTokenizer:
    """One token per character, and a chat template that writes each turn on its own line."""

    def encode(self, text: str, /, *, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int], /) -> str:
        return "".join(chr(t) for t in token_ids)

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        /,
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
    ) -> Any:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in conversation)
        return text + ("<assistant>" if add_generation_prompt else "")

    def save_pretrained(self, save_directory: str, /) -> Any:
        return None


class FakeEngine:
    """Answers a prompt that contains a pool row's problem with `answers[problem]` (a judgment's
    decoded part: the digits and the brace after JUDGMENT_PREFIX), "00}" when none is given."""

    def __init__(self, answers: dict[str, str] | None = None) -> None:
        self.tokenizer: ports.Tokenizer = CharTokenizer()
        self.answers = answers or {}
        self.calls: list[dict[str, Any]] = []

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        stop: Sequence[str] = (),
        logprobs: bool = True,
        top_logprobs: int = 0,
        regex: str | Sequence[str | None] | None = None,
        seed: int,
    ) -> list[list[Completion]]:
        self.calls.append({"prompts": len(prompt_token_ids), "n": n, "regex": regex})
        out = []
        for ids in prompt_token_ids:
            prompt = self.tokenizer.decode(ids)
            text = next((a for p, a in self.answers.items() if p in prompt), "00}")
            tokens = self.tokenizer.encode(text)
            out.append([Completion(tokens, text, [-0.5] * len(tokens)) for _ in range(n)])
        return out

    def next_token_logprobs(self, prompt_token_ids, allowed_token_ids, temperature):
        raise AssertionError("judge.scoring=sampled asks for no next-token log-probs")

    def sequence_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        return [-1.0] * (len(token_ids) - 1)

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        list(named_tensors)

    def close(self) -> None:
        pass


class FakeTrainer:
    """Records each `train_step` (rollouts, judgments, lam) and returns one metric."""

    def __init__(self) -> None:
        self.steps: list[tuple[RolloutBatch, JudgmentBatch | None, float]] = []

    def train_step(
        self, rollouts: RolloutBatch, judgments: JudgmentBatch | None, lam: float
    ) -> dict[str, float]:
        self.steps.append((rollouts, judgments, lam))
        return {"loss": 0.0}

    def prompt_features(self, prompts: list[list[int]]) -> list[list[float]]:
        return [[float(len(p)), 1.0] for p in prompts]

    def sequence_logprobs(self, token_ids: list[int]) -> list[float]:
        return [-1.0] * (len(token_ids) - 1)

    def named_weights(self) -> Iterator[tuple[str, Any]]:
        yield from ()

    def engine_weights(self, engine_dtype: str, step: int) -> Iterator[tuple[str, Any]]:
        yield from engine_weights(self.named_weights(), engine_dtype, step)

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        pass

    def export_hf(self, directory: Path) -> None:
        pass

    def close(self) -> None:
        pass


class FakeTracker:
    """Keeps what it is told in lists instead of sending it to MLflow."""

    def __init__(self) -> None:
        self.tracking_uri, self.experiment_id = "memory://", "0"
        self.run_id: str | None = "fake"
        self.logged: list[tuple[str, Any]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append(("metrics", (metrics, step)))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.logged.append(("dict", artifact_file))

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        self.logged.append(("table", artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.logged.append(("text", artifact_file))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.logged.append(("figure", artifact_file))

    def set_tag(self, key: str, value: str) -> None:
        self.logged.append(("tag", (key, value)))

    def register_checkpoint(
        self, hf_dir: str, step: int, run_id: str, accuracy: float | None, keep: int = 0
    ) -> str | None:
        self.logged.append(("model", hf_dir))
        return "1"

    def end(self, status: str = "FINISHED") -> None:
        self.logged.append(("end", status))


def problem(i: int) -> str:
    return f"Problem {i:02d}: what is {i} + 3?"


def pool_rows() -> list[dict[str, Any]]:
    rows = [
        {
            "prompt_id": f"p{i:02d}",
            "prompt": problem(i),
            "answer": str(i + 3),
            "task": "basic_arithmetic",
            "difficulty": "easy",
            "metadata": "{}",
            "domain": "math",
            "reward": "reasoning_gym",
            "split": "train" if i < POOL else "heldout",
        }
        for i in range(POOL + 2)
    ]
    return rows


def make_run(tmp_path: Path, extra: Sequence[str] = (), engine: FakeEngine | None = None) -> Run:
    """A run of the integration tier's tiny shape (B=2 of m*B=6 candidates) on the fakes."""
    cfg = load_config(None, tiny_overrides(tmp_path / "model", tmp_path / "runs", extra=extra))
    return Run(
        cfg=cfg,
        run_id="r",
        run_dir=tmp_path / "runs" / "r",
        model_dir=tmp_path / "model",
        pool=Dataset.from_list(pool_rows()),
        engine=engine or FakeEngine(),
        trainer=FakeTrainer(),
        store=OutcomeStore(tmp_path / "history.duckdb"),
        tracker=FakeTracker(),
        sampler=new_sampler(cfg),
        baseline=MovingAverageBaseline(cfg.judge.baseline_momentum),
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
