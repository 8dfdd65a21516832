"""Reading a run's config: a sparse YAML file plus `--set key=value` overrides, validated into a
`RunConfig` with errors that name each bad key; and the markdown reference of every field.

Not pydantic-settings (installed with Prefect): its CLI source wants `--section.field value` flags
with JSON values and owns the parser, while `--set a.b=[x, y]` takes YAML like the config files, and
reading environment variables into a run's config would make a resumed run differ from its
config.json; the layering here is 25 lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from metis_core.config import RunConfig, SettingsError, TaskSpec
from metis_core.domains import domains, task_source

SectionT = TypeVar("SectionT", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override that does not validate; the message says which key and why."""


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: `{key}` is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Read a YAML config (sparse: only what differs from the defaults) and apply `key=value`
    overrides, e.g. `curriculum.batch_prompts=4`. Raises ConfigError naming each bad key."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        tree = loaded
    cfg = _validated(RunConfig, _overridden(tree, overrides))
    _check_files(cfg)
    return cfg


def load_section(
    section: type[SectionT], name: str, overrides: list[str] | tuple[str, ...] = ()
) -> SectionT:
    """One section of a config (e.g. TrainerConfig as `trainer`) from its defaults and `key=value`
    overrides of its own keys, validated alone: a whole config also checks its tasks' datasets,
    which a benchmark of one part need not load. Raises ConfigError naming each bad key."""
    return _validated(section, _overridden({}, overrides), where=name)


def _overridden(tree: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got `{item}`")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw)
    return tree


def _validated(model: type[SectionT], tree: dict[str, Any], where: str = "") -> SectionT:
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join([*filter(None, [where]), *(str(p) for p in e["loc"])]) or "config"
            inner = e.get("ctx", {}).get("error")
            found = (
                inner.problems if isinstance(inner, SettingsError) else [((), e["msg"], e["type"])]
            )
            for loc, msg, kind in found:  # a domain's settings problems by their own keys
                full = ".".join([key, *map(str, loc)])
                unknown = "unknown key (check spelling; see docs/configs.md)"
                lines.append(f"  {full}: {unknown if kind == 'extra_forbidden' else msg}")
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None


def _check_files(cfg: RunConfig) -> None:
    """The files a config names must be there now, not when the run reaches them."""
    named = [("trainer.deepspeed_config", cfg.trainer.deepspeed_config)]
    if cfg.data.file is not None:
        named.append(("data.file", cfg.data.file))
    else:
        named += [
            (f"data.tasks.{i}.name", t.name)
            for i, t in enumerate(cfg.data.tasks)
            if task_source(t.source)[1].name_is_file
        ]
    for key, name in named:
        if name is not None and not Path(name).is_file():
            raise ConfigError(
                f"invalid config:\n  {key}: no such file {name!r} "
                f"(relative paths are read from {Path.cwd()})"
            )
    if cfg.trainer.deepspeed_config is not None:
        try:
            merged = json.loads(Path(cfg.trainer.deepspeed_config).read_text())
        except (ValueError, OSError) as err:
            merged = err
        if not isinstance(merged, dict):
            raise ConfigError(
                f"invalid config:\n  trainer.deepspeed_config: {cfg.trainer.deepspeed_config} "
                f"must hold a JSON object ({merged!r:.120})"
            )


def config_reference() -> str:
    """Markdown table of every field with its default and docstring (docs/configs.md is this)."""
    lines = [
        "# Config reference",
        "",
        "Generated from `metis_core/config.py` by `metis config --reference`; a unit test keeps it current.",
        "Set any field in a YAML file (sections as mappings) or with `--set section.field=value`.",
        "",
    ]

    def section(title: str, model: type[BaseModel], prefix: str, about: str = "") -> None:
        lines.extend([f"## {title}", ""] + ([about, ""] if about else []))
        lines.extend(["| key | default | meaning |", "| --- | --- | --- |"])
        nested = []
        for name, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                nested.append((name, type(default), ""))
                continue
            if name == "domains":  # one section per registered domain
                nested += [(f"domains.{d.name}", d.settings, d.description) for d in domains()]
                continue
            if isinstance(default, list) and default and isinstance(default[0], BaseModel):
                default = f"{len(default)} entries (see configs/default.yaml)"
            doc = (field.description or "").replace("\n", " ").replace("|", "\\|")
            if field.is_required():
                shown = "required"
            elif isinstance(default, str) and default.endswith("(see configs/default.yaml)"):
                shown = default
            else:
                shown = json.dumps(default)
            lines.append(f"| `{prefix}{name}` | `{shown}` | {doc} |")
        lines.append("")
        for name, sub, about in nested:
            section(f"{prefix}{name}", sub, f"{prefix}{name}.", about)

    section("top level", RunConfig, "")
    section("data.tasks[]", TaskSpec, "")
    return "\n".join(lines)


def flat_params(cfg: RunConfig) -> dict[str, str]:
    """Flattened `section.field -> value` for MLflow params (lists as JSON)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", cfg.model_dump(mode="json"))
    return out


def changed_settings(before: RunConfig, now: RunConfig) -> list[str]:
    """The settings (`section.field`, as in `flat_params`) whose values differ, sorted."""
    a, b = flat_params(before), flat_params(now)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def describe_changes(before: RunConfig, now: RunConfig, shown: int = 6) -> str:
    """`changed_settings` for a message: "a, b differ", the first `shown` and how many more; ""
    when none differ."""
    changed = changed_settings(before, now)
    if not changed:
        return ""
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return f"{', '.join(changed[:shown])}{more} differ"
