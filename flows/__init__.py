"""Prefect flows (metis-train) and the `metis` command line."""
