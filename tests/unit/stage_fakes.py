"""In-memory fakes of the ports for the stage tests (tests/unit/test_stages.py): the engine
answers each judgment prompt with a canned judgment chosen by the candidate's problem text, the
trainer records what it was asked to train, the tracker records what it was told; `make_run`
puts them in a Run of the integration tier's tiny shape over a real DuckDB store in tmp_path."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from metis_core import ports
from metis_core.algorithms import MovingAverageBaseline
from metis_core.config_loading import load_config
from metis_core.ports import Completion, JudgmentBatch, RolloutBatch
from metis_core.rounding import engine_weights
from metis_core.run import Run, new_sampler
from metis_core.store.outcomes import OutcomeStore
from tests.conftest import tiny_overrides

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
