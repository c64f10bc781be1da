"""The exit codes of every ``glia`` command, and which error gives which, in one place so scripts
and schedulers can rely on them."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # bad input, configuration or SQL: the message says what to fix
EXIT_BUSY = 2  # another process holds the database or the run lock: try again later
EXIT_STRICT = 3  # glia run --strict: the run finished but some input was rejected or skipped


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of an error whose message says what to fix: :data:`EXIT_BUSY` while another
    process holds the database, :data:`EXIT_ERROR` for bad input, configuration or SQL, a missing
    extra or a database too new for this Glia. ``None`` for any other error (a bug)."""
    import duckdb  # here, not at import: `glia --help` stays fast

    from glia.core.extras import MissingExtraError
    from glia.storage.catalog import DatabaseBusyError, SchemaTooNewError
    from glia.storage.lock import RunInProgressError

    if isinstance(exc, (RunInProgressError, DatabaseBusyError)):
        return EXIT_BUSY
    if isinstance(exc, (ValueError, FileNotFoundError, MissingExtraError, SchemaTooNewError, duckdb.Error)):
        return EXIT_ERROR  # ConfigError is a ValueError
    if isinstance(exc, LookupError) and not isinstance(exc, (KeyError, IndexError)):
        return EXIT_ERROR  # a named thing that is not there: no run N, nothing to undo (KeyError: a bug)
    return None
