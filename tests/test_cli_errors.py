"""The command line's one error boundary (cli/main.py): what each kind of error prints and exits with."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from glia.cli import main as cli
from glia.cli.exit_codes import EXIT_BUSY, EXIT_ERROR
from glia.storage.lock import RunLock

CLI = Path(cli.__file__).resolve().parent


def test_no_command_module_maps_errors_to_exit_codes_itself() -> None:
    """Only cli/main.py catches errors; a command may catch Ctrl-C, which ends it normally."""
    for path in sorted(CLI.glob("*.py")):
        if path.name == "main.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler):
                caught = ast.unparse(node.type) if node.type is not None else "everything"
                assert caught == "KeyboardInterrupt", f"{path.name}:{node.lineno} catches {caught}"


def test_bad_input_prints_one_line_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text("[stages.dedup]\nbandz = 4\n")
    assert cli.main(["reindex", "--db", str(tmp_path / "g.duckdb"), "--rules", str(rules)]) == EXIT_ERROR
    out = capsys.readouterr().out
    assert out.startswith("glia: ") and "bandz" in out and "Traceback" not in out
    assert cli.main(["undo", "--db", str(tmp_path / "missing.duckdb"), "1"]) == EXIT_ERROR
    assert "no Glia database at" in capsys.readouterr().out


def test_a_held_database_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "g.duckdb"
    db.touch()
    with RunLock(db):
        assert cli.main(["undo", "--db", str(db), "1"]) == EXIT_BUSY
    assert "another run is in progress on this database" in capsys.readouterr().out


def test_a_failed_night_says_it_is_recorded_and_a_bug_elsewhere_keeps_its_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from glia.engine import night
    from glia.storage import prune_queue

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(night, "run_night", broken)
    argv = ["run", str(tmp_path), "--db", str(tmp_path / "g.duckdb"), "-q", "--orchestrator", "plain"]
    assert cli.main(argv) == EXIT_ERROR
    out = " ".join(capsys.readouterr().out.split())
    assert "glia: the run failed (RuntimeError: disk on fire); it is recorded as failed in v_runs" in out
    monkeypatch.setattr(prune_queue, "undo", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(["undo", "--db", str(tmp_path / "g.duckdb"), "1"])
