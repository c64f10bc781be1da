"""Prefect glue: the nightly flow and its tasks. Domain logic lives in ``curation``."""
