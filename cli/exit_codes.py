"""The exit codes of every ``glia`` command, in one place so scripts and schedulers can rely on them."""

EXIT_OK = 0
EXIT_ERROR = 1  # bad input, configuration or SQL: the message says what to fix
EXIT_BUSY = 2  # another process holds the database or the run lock: try again later
EXIT_STRICT = 3  # glia run --strict: the run finished but some input was rejected or skipped
