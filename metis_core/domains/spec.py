"""What a task domain declares, and the registry that config, data, rewards and evaluation read.

A domain is one module that builds a `DomainSpec` and calls `register_domain` on it: its
settings (prompt format, decoding limits, reward mode: a config section under `data.domains`),
the task sources `data.tasks` entries may name, the reward functions its rows are scored by, the
benchmarks `metis eval` may name, and (optionally) the regex constrained decoding holds its
answers to. The built-in domains (math, code, function_calling) register when
`metis_core.domains` is imported; docs/domains.md shows how to add one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from metis_core.config_section import Section
from metis_core.rewards.registry import REWARDS, RewardFn, register_reward, unregister_reward

if TYPE_CHECKING:
    from metis_core.config import TaskSpec

Row = dict[str, str]


class DomainConfig(Section):
    """The settings every domain has; a domain subclasses it to give its own defaults."""

    system_prompt: str
    """System message of this domain's task prompts."""
    assistant_prefill: str = ""
    """Text the assistant turn starts with (a row's own `prefill`, e.g. a code header, wins)."""
    max_tokens: int = Field(gt=0)
    """Longest completion, in tokens."""
    stop: list[str] = []
    """Stop strings; a completion ends at the first one."""
    reward_mode: Literal["discrete", "continuous"] = "discrete"
    """`discrete`: 1 right / 0 wrong. `continuous`: partial credit (share of tests passed, share
    of the expected call's name and arguments that match). Math answers are always discrete."""
    constrained: bool = False
    """Constrain completions to the domain's answer format with vLLM structured outputs (only
    function calling has one: documented function and parameter names, literal values)."""

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: list[str]) -> list[str]:
        if "" in stop:
            raise ValueError("an empty stop string would end every completion at once")
        return stop


def takes_no_params(entry: TaskSpec) -> None:
    """The check of a source without generator knobs."""
    if entry.params:
        raise ValueError(f"source {entry.source!r} takes no `params`, got {sorted(entry.params)}")


@dataclass(frozen=True)
class TaskSource:
    """Where `data.tasks` entries with `source: <name>` get their prompts."""

    name: str
    rows: Callable[[TaskSpec, int], list[Row]]
    """(the entry, a seed) -> pool rows (keys: see metis_core/domains/__init__.py)."""
    check: Callable[[TaskSpec], None] = takes_no_params
    """Raises ValueError naming what in an entry the source cannot use (run at config load)."""
    generates: bool = False
    """The source generates prompts, so an entry must say how many (`size`)."""
    needs_name: bool = False
    """An entry must name a dataset, file or category (`name`)."""
    name_is_file: bool = False
    """`name` is a file path, checked to exist when the config loads."""


@dataclass(frozen=True)
class Benchmark:
    """A fixed benchmark `metis eval` may name: `<name>`, or `<name>:<argument>` when it takes
    one (e.g. `bfcl:simple_python`)."""

    name: str
    rows: Callable[[str, int | None, int], list[Row]]
    """(the argument or "", at most this many prompts or None for all, a seed) -> pool rows."""
    help: str
    """How to name it, for `--help` and errors, e.g. `bfcl:<category> (e.g. bfcl:multiple)`."""
    takes_argument: bool = False


@dataclass(frozen=True)
class DomainSpec:
    name: str
    settings: type[DomainConfig]
    """The `data.domains.<name>` config section (a DomainConfig subclass with this domain's
    defaults and docstrings)."""
    description: str
    """One line for the config reference."""
    sources: tuple[TaskSource, ...]
    rewards: Mapping[str, RewardFn] = field(default_factory=dict)
    """The reward functions its rows name in their `reward` column."""
    benchmarks: tuple[Benchmark, ...] = ()
    default_benchmarks: tuple[str, ...] = ()
    """What `metis eval` runs for this domain when no benchmark is named."""
    answer_regex: Callable[[dict[str, Any]], str] | None = None
    """row -> the regex its completions are constrained to (when the settings' `constrained`)."""
    discrete_only: bool = False
    """Answers are right or wrong: the settings' reward_mode is ignored (math)."""
    needs_sandbox: bool = False
    """Its reward runs model-written code: a run refuses to start without a namespace sandbox."""


_DOMAINS: dict[str, DomainSpec] = {}


def register_domain(spec: DomainSpec) -> DomainSpec:
    """Make a domain known to config, pool, rewards and evaluation. Names of domains, sources,
    rewards and benchmarks must be new (ValueError otherwise; nothing is registered then)."""
    taken = {
        "domain": set(_DOMAINS),
        "source": {s.name for d in _DOMAINS.values() for s in d.sources},
        "benchmark": {b.name for d in _DOMAINS.values() for b in d.benchmarks} | {"heldout"},
        "reward": set(REWARDS),
    }
    mine = {
        "domain": [spec.name],
        "source": [s.name for s in spec.sources],
        "benchmark": [b.name for b in spec.benchmarks],
        "reward": list(spec.rewards),
    }
    for kind, names in mine.items():
        clash = sorted((set(names) & taken[kind]) | {n for n in names if names.count(n) > 1})
        if clash:
            raise ValueError(f"domain {spec.name!r}: {kind} name(s) {clash} already registered")
    if not issubclass(spec.settings, DomainConfig):
        raise TypeError(f"domain {spec.name!r}: settings must subclass DomainConfig")
    for reward, fn in spec.rewards.items():
        register_reward(reward)(fn)
    _DOMAINS[spec.name] = spec
    return spec


def unregister_domain(name: str) -> None:
    """Forget a domain and its rewards (for tests that register a toy domain)."""
    spec = _DOMAINS.pop(name, None)
    for reward in spec.rewards if spec else ():
        unregister_reward(reward)


@contextmanager
def registered(spec: DomainSpec) -> Iterator[DomainSpec]:
    """The domain registered for the length of a `with` block."""
    register_domain(spec)
    try:
        yield spec
    finally:
        unregister_domain(spec.name)


def domains() -> list[DomainSpec]:
    """Every registered domain, in registration order (the built-ins first)."""
    return list(_DOMAINS.values())


def domain_spec(name: str) -> DomainSpec:
    try:
        return _DOMAINS[name]
    except KeyError:
        raise KeyError(f"no domain named {name!r}; registered: {', '.join(_DOMAINS)}") from None


def task_source(name: str) -> tuple[DomainSpec, TaskSource]:
    """The domain and source a `data.tasks` entry's `source` names."""
    for spec in _DOMAINS.values():
        for source in spec.sources:
            if source.name == name:
                return spec, source
    names = [s.name for d in _DOMAINS.values() for s in d.sources]
    raise ValueError(f"unknown source {name!r}; registered: {', '.join(names)}")


def benchmark(name: str) -> tuple[Benchmark, str]:
    """The benchmark `name` (`humaneval`, `bfcl:multiple`, ...) names, and its argument."""
    head, _, argument = name.partition(":")
    for spec in _DOMAINS.values():
        for bench in spec.benchmarks:
            if bench.name == head and bool(argument) == bench.takes_argument:
                return bench, argument
    raise KeyError(name)


def benchmark_help() -> str:
    """The benchmarks `metis eval` accepts, for `--help` and errors."""
    return ", ".join([b.help for d in _DOMAINS.values() for b in d.benchmarks] + ["heldout"])
