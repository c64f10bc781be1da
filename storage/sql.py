"""SQL text for values DuckDB cannot take as parameters (file lists in ``read_parquet``,
``SET`` values, view bodies). Everything else is passed as a bound parameter."""

from __future__ import annotations

from collections.abc import Sequence


def literal(value: str) -> str:
    """A single-quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def parquet_scan(paths: Sequence[str], **options: str) -> str:
    """``read_parquet([...])`` over an explicit list of files (never a glob: only committed
    files may be read), with extra options such as ``filename="true"``."""
    args = "".join(f", {k} = {v}" for k, v in options.items())
    return f"read_parquet([{', '.join(literal(p) for p in paths)}]{args})"
