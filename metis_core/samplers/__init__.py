"""Curricula: each turns a candidate pool (+ judgments, + history) into a rollout allocation."""

from metis_core.samplers import metis as _metis  # noqa: F401  (registers)
from metis_core.samplers import uniform as _uniform  # noqa: F401  (registers)
from metis_core.samplers.base import SAMPLERS, Sampler, make_sampler, register_sampler, top_b

__all__ = ["SAMPLERS", "Sampler", "make_sampler", "register_sampler", "top_b"]
