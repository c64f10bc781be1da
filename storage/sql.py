"""SQL text for values DuckDB cannot take as parameters (file lists in ``read_parquet``,
``SET`` values, view bodies). Everything else is passed as a bound parameter."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def literal(value: str) -> str:
    """A single-quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def parquet_scan(paths: Sequence[str], **options: str) -> str:
    """``read_parquet([...])`` over an explicit list of files (never a glob: only committed
    files may be read), with extra options such as ``filename="true"``."""
    args = "".join(f", {k} = {v}" for k, v in options.items())
    return f"read_parquet([{', '.join(literal(p) for p in paths)}]{args})"


def identifier(name: str) -> str:
    """A double-quoted SQL identifier (a table, view or column name)."""
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def registered(con: Any, name: str, table: Any) -> Iterator[None]:
    """``table`` (Arrow) visible to SQL on ``con`` as ``name`` inside the ``with`` block, and
    gone after it, also when a statement in it fails."""
    con.register(name, table)
    try:
        yield
    finally:
        con.unregister(name)


def relations(con: Any) -> set[str]:
    """Names of the tables and views in the catalog's main schema."""
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}


def relation_columns(con: Any, name: str) -> dict[str, str]:
    """Column name -> DuckDB type of a table or view of the main schema, in column order."""
    return dict(con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position", [name]).fetchall())
