"""What the stages need of the systems a run drives: the engine, the trainer, the store, the tracker.

Each port is a Protocol holding only the methods the stages (metis_core/stages/), the Prefect
tasks (tasks/) and the training flow call on `run.engine`, `run.trainer`, `run.store` and
`run.tracker`; the adapters (vLLM in metis_core/engine/, DeepSpeed in metis_core/trainer/, DuckDB
in metis_core/store/, MLflow in metis_core/tracking/) satisfy them structurally, and a test can
hand a stage an in-memory fake instead. The values that cross a port (an engine's `Completion`,
the trainer's `RolloutBatch` and `JudgmentBatch`) live here too, so a stage builds them without
importing an adapter. tests/unit/test_ports.py checks the adapters' signatures against these.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

# ---- values that cross the ports ----------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One sampled completion of a prompt."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    """The log-prob of each sampled token under the distribution it was sampled from (masked by
    the decoding constraint, at the sampling temperature, after top-p); empty unless asked for."""
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    """Per sampled token, the log-probs of the `top_logprobs` most likely tokens (and the sampled
    one) under that same distribution, by token id; empty unless asked for."""


@dataclass
class RolloutBatch:
    """B*n sampled sequences, their advantages, and how they were sampled."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    advantages: list[float]
    engine_logprobs: list[list[float]] | None = None
    """The engine's log-prob of each sampled token (its sampling distribution); None skips the
    mismatch check and the importance correction."""
    temperature: float = 1.0
    """The temperature the responses were sampled at."""
    top_p: float = 1.0
    """The nucleus mass they were sampled with."""
    regexes: list[str | None] | None = None
    """Per row, the regex its decoding was constrained to (None: unconstrained)."""


@dataclass
class JudgmentBatch:
    """|S_t| judgments of the selected prompts, their rewards, and the baseline b_t."""

    prompt_ids: list[list[int]]
    judgment_ids: list[list[int]]
    rewards: list[float]
    baseline: float
    engine_logprobs: list[list[float]] | None = None
    """The engine's log-prob of each emitted judgment token; None skips check and correction."""
    temperature: float = 1.0
    """The temperature the judgments were sampled at."""
    regexes: list[str | None] | None = None
    """Per judgment, the regex its decoding was constrained to (None: unconstrained)."""


# ---- the ports ----------------------------------------------------------------------------------


class Tokenizer(Protocol):
    """The part of an HF tokenizer the stages use (the engine's, so ids match what it samples)."""

    def encode(self, text: str, /, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], /) -> str: ...

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        /,
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
    ) -> Any: ...

    def save_pretrained(self, save_directory: str, /) -> Any: ...


class Engine(Protocol):
    """The inference engine: samples completions and judgments, takes the trainer's weights."""

    tokenizer: Tokenizer

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
        """n completions per prompt, each decoding constrained to `regex` when given (one for
        all prompts or one per prompt); the same prompts, parameters, weights and seed give the
        same completions. `top_logprobs` > 0 also returns each step's most likely tokens."""
        ...

    def next_token_logprobs(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        allowed_token_ids: Sequence[Sequence[int]],
        temperature: float,
    ) -> list[dict[int, float]]:
        """Per prompt, the log-prob of each allowed next token (every other one masked out)."""
        ...

    def sequence_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """The log-prob of each token after the first, at temperature 1."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def close(self) -> None: ...


class Trainer(Protocol):
    """The trainer holding the policy: one update per iteration, weights out for sync and saves."""

    def train_step(
        self, rollouts: RolloutBatch, judgments: JudgmentBatch | None, lam: float
    ) -> dict[str, float]:
        """One update on L_task + lam * L_judge; scalar metrics."""
        ...

    def prompt_features(self, prompts: list[list[int]]) -> list[list[float]]:
        """[N, H] the policy's frozen features of each prompt (no gradient)."""
        ...

    def sequence_logprobs(self, token_ids: list[int]) -> list[float]: ...

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]: ...

    def engine_weights(self, engine_dtype: str, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        """What an engine of `engine_dtype` is sent after step `step`'s update: the fp32 weights,
        or for a bf16 engine their stochastic rounding (metis_core/rounding.py)."""
        ...

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None: ...

    def export_hf(self, directory: Path) -> None: ...

    def close(self) -> None:
        """Release what the trainer holds outside this process (its ranks, when it has any)."""
        ...


class Store(Protocol):
    """The outcome history: prompts, outcomes, judgments and step metrics of a run."""

    def add_prompts(self, rows: Sequence[dict[str, Any]]) -> int: ...

    def replace_step(
        self,
        run_id: str,
        step: int,
        outcomes: Sequence[dict[str, Any]],
        judgments: Sequence[dict[str, Any]],
    ) -> dict[str, int]:
        """A step's outcome and judgment rows, replacing whatever the step held before."""
        ...

    def record_step(self, run_id: str, step: int, metrics: dict[str, Any]) -> None: ...

    def recent_variances(
        self, run_id: str, before_step: int, limit: int, domain: str | None = None
    ) -> list[tuple[str, float, int]]:
        """(prompt text, realised variance, step) of the most recent trained prompts (of one
        domain, if given), newest first."""
        ...

    def past_outcomes(
        self, run_id: str, before_step: int, limit: int
    ) -> list[tuple[str, str, str, str, str, int, float]]:
        """(prompt_id, prompt, task, difficulty, domain, step, realised variance) of the most
        recent trained prompts, newest first."""
        ...

    def judged_selected(self, run_id: str) -> list[tuple[int, float, float]]:
        """(step, v_hat, realised variance) of every selected prompt whose judgment parsed."""
        ...

    def step_metrics(self, run_id: str) -> list[tuple[int, dict[str, float]]]: ...

    def latest_metric(
        self, run_id: str, key: str, through_step: int | None = None
    ) -> float | None: ...


class Tracker(Protocol):
    """Where a run's metrics, artifacts and model versions go (MLflow)."""

    tracking_uri: str
    experiment_id: str
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_dict(self, data: Any, artifact_file: str) -> None: ...

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def set_tag(self, key: str, value: str) -> None: ...

    def register_checkpoint(
        self, hf_dir: str, step: int, run_id: str, accuracy: float | None, keep: int = 0
    ) -> str | None:
        """The HF export in `hf_dir` as a model version of the run; its version, or None when
        the tracker cannot take it now (the checkpoint on disk is unaffected). `keep` > 0: only
        the newest `keep` versions and the best stay."""
        ...

    def end(self, status: str = "FINISHED") -> None: ...
