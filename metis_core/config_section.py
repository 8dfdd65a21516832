"""The base of every config section: unknown keys refused, frozen, each field documented by the
docstring under it (which `metis config --reference` prints)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False
    )
