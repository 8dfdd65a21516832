"""Prefect tasks: thin wrappers over metis_core's stages, one per stage, visible by name in the UI."""
