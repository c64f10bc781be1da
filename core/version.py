"""The package version: one place, read by the build (pyproject's dynamic version) and the runs table."""

__version__ = "0.1.0"
