"""Prefect flows (metis-train) and the `metis` command line.

Importing this package chooses the OpenMP runtime (metis_core/openmp.py) before anything here
imports torch: the `metis` command and a deployment's flow run (Prefect imports flows/train.py)
both come through it."""

from metis_core.openmp import configure_openmp

configure_openmp()
