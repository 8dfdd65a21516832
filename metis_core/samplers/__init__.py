"""Curricula: each turns a candidate pool (+ judgments, + history) into a rollout allocation."""

from metis_core.samplers import dapo as _dapo  # noqa: F401  (registers)
from metis_core.samplers import greso as _greso  # noqa: F401  (registers)
from metis_core.samplers import metis as _metis  # noqa: F401  (registers)
from metis_core.samplers import mopps as _mopps  # noqa: F401  (registers)
from metis_core.samplers import pcl as _pcl  # noqa: F401  (registers)
from metis_core.samplers import uniform as _uniform  # noqa: F401  (registers)
from metis_core.samplers.base import (
    SAMPLERS,
    Candidate,
    Outcome,
    Sampler,
    make_sampler,
    register_sampler,
    top_b,
)

__all__ = [
    "SAMPLERS",
    "Candidate",
    "Outcome",
    "Sampler",
    "make_sampler",
    "register_sampler",
    "top_b",
]
