"""``glia sql`` and the dashboard inspect the catalog without becoming a way to read or write other files.

Over the catalog of the shared three-night run (``three_nights``): statements that write files
are refused (also into the catalog's own folders, which DuckDB's ``allowed_directories`` would
let them write), reads of files that are not the catalog's are refused, no setting turns that
back off, every view still answers, and ``--allow-files`` gives full access back. The
dashboard's data layer (``dashboards.data.Db``) is restricted the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from conftest import ThreeNights, glia, open_db, query

SECRET = "not-for-inspection-7f3a"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A CSV file in a folder that has nothing to do with the catalog."""
    path = tmp_path / "elsewhere" / "secret.csv"
    path.parent.mkdir()
    path.write_text(f"token\n{SECRET}\n")
    return path


def sql(db: Path, statement: str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    """``glia sql`` in this process: its exit code and its output with lines joined."""
    from glia.cli.main import main

    code = main(["sql", statement, "--db", str(db), *flags])
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich would wrap the messages the tests look for


def catalog_folder(db: Path) -> Path:
    """A folder inspection may read: the one holding the ``documents`` tag files."""
    return Path(query(db, "SELECT path FROM tag_files WHERE tagger = 'documents' LIMIT 1")[0][0]).parent


def test_copy_is_refused_and_writes_no_file(three_nights: ThreeNights, tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    res = glia(["sql", f"COPY (SELECT 1 AS a) TO '{target}'", "--db", str(three_nights.db)], tmp_path)
    out = " ".join(res.stdout.split())
    assert res.returncode == 1, out
    assert "refused COPY statement" in out and "--allow-files" in out
    assert not target.exists()


@pytest.mark.parametrize("template", [
    "COPY (SELECT 1 AS a) TO '{path}'",
    "COPY (SELECT 1 AS a) TO '{path}' (USE_TMP_FILE false)",
    "EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{path}'",
    "EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1 AS a) TO '{path}'",
    "SELECT 1; PREPARE p AS COPY (SELECT 1 AS a) TO '{path}'; EXECUTE p",
    "EXPORT DATABASE '{path}'",
    "ATTACH '{path}' AS other",
])
def test_nothing_is_written_into_the_catalogs_own_folders(three_nights: ThreeNights, template: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # DuckDB may write where it may read; these folders hold the tag files the views read.
    target = catalog_folder(three_nights.db) / "sandbox-probe.out"
    try:
        code, out = sql(three_nights.db, template.format(path=target), capsys)
        assert code == 1, out
        assert "refused" in out and "--allow-files" in out
        assert not target.exists()
    finally:  # should the check fail, leave the shared run's folder as it was (EXPORT makes a folder)
        for made in target.parent.glob(f"{target.name}*"):
            if made.is_dir():
                shutil.rmtree(made)
            else:
                made.unlink()


@pytest.mark.parametrize("template", [
    "SELECT * FROM read_csv('{path}')",
    "SELECT * FROM '{path}'",
    "SELECT content FROM read_text('{path}')",
    "SELECT * FROM glob('{folder}/*')",
    "SELECT * FROM read_csv('/etc/passwd')",
])
def test_other_files_are_not_read(three_nights: ThreeNights, secret: Path, template: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out = sql(three_nights.db, template.format(path=secret, folder=secret.parent), capsys)
    assert code == 1, out
    assert "Permission Error" in out and "--allow-files" in out
    assert SECRET not in out and "secret.csv" not in out.replace(str(secret), "")
    assert "root:" not in out


def test_no_setting_lifts_the_restriction(three_nights: ThreeNights, secret: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from glia.storage.catalog import Catalog

    with Catalog.open_inspection(three_nights.db) as cat:
        for statement in ("SET enable_external_access = true", "RESET enable_external_access",
                          f"SET allowed_directories = ['{secret.parent}']", f"SET allowed_paths = ['{secret}']",
                          "SET lock_configuration = false", f"SET profiling_output = '{secret.parent / 'p.json'}'"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                cat.inspect(statement)
        with pytest.raises(duckdb.PermissionException):
            cat.inspect(f"SELECT * FROM read_csv('{secret}')").fetchall()
    code, out = sql(three_nights.db, f"SET enable_external_access = true; SELECT * FROM read_csv('{secret}')", capsys)
    assert code == 1 and SECRET not in out
    assert "the configuration has been locked" in out and "--allow-files" in out


def test_every_view_answers(three_nights: ThreeNights, capsys: pytest.CaptureFixture[str]) -> None:
    from glia.storage.catalog import Catalog

    with open_db(three_nights.db) as con:
        views = [v for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]
        expected = {v: con.execute(f'SELECT count(*) FROM "{v}"').fetchone()[0] for v in views}
        shard = con.execute("SELECT path, n_rows FROM shards WHERE status = 'active' LIMIT 1").fetchone()
    assert {"v_documents", "v_duplicates", "v_runs", "v_shards", "v_skipped"} <= set(views)
    with Catalog.open_inspection(three_nights.db) as cat:
        got = {v: cat.inspect(f'SELECT count(*) FROM "{v}"').fetchall()[0][0] for v in views}
        # the registered shards stay readable: the dashboard shows a document's text from them
        assert cat.inspect(f"SELECT count(*) FROM read_parquet('{shard[0]}')").fetchall()[0][0] == shard[1]
    assert got == expected and expected["v_documents"] > 0
    code, out = sql(three_nights.db, "SELECT count(*) AS n FROM v_documents", capsys)
    assert code == 0 and str(expected["v_documents"]) in out


def test_allow_files_gives_full_access(three_nights: ThreeNights, tmp_path: Path, secret: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "x.csv"
    code, out = sql(three_nights.db, f"COPY (SELECT run_id FROM v_runs) TO '{target}'", capsys, "--allow-files")
    assert code == 0, out
    assert target.read_text().split() == ["run_id", "1", "2", "3", "4"]
    code, out = sql(three_nights.db, f"SELECT * FROM read_csv('{secret}')", capsys, "--allow-files")
    assert code == 0 and SECRET in out


def test_the_dashboards_reads_are_restricted(three_nights: ThreeNights, tmp_path: Path, secret: Path) -> None:
    from glia.cli.dashboard import dashboard_command
    from glia.dashboards import data

    db = data.Db(three_nights.db)
    target = tmp_path / "x.csv"
    with pytest.raises(duckdb.PermissionException):
        db.rows(f"COPY (SELECT 1 AS a) TO '{target}'")
    assert not target.exists()
    for path in (secret, Path("/etc/passwd")):
        with pytest.raises(duckdb.PermissionException):
            db.rows("SELECT * FROM read_csv(?)", [str(path)])
    # the pages still work, a document's text (read from its shard) included
    assert len(data.runs(db)) == 4
    doc_id = db.rows("SELECT doc_id FROM v_documents ORDER BY doc_id LIMIT 1")[0][0]
    doc = data.document(db, doc_id)
    assert doc is not None and doc.text_error is None and doc.text
    assert data.Db(three_nights.db, allow_files=True).rows("SELECT token FROM read_csv(?)", [str(secret)]) == [(SECRET,)]
    assert dashboard_command(three_nights.db, allow_files=True)[-1] == "--allow-files"
    assert "--allow-files" not in dashboard_command(three_nights.db)


def test_the_restriction_ends_with_the_connection(three_nights: ThreeNights) -> None:
    # Connections of one process share the database instance and its file settings: once the
    # inspection is closed, other readers (the rest of the suite, a run) must get a plain one.
    from glia.storage.catalog import Catalog

    Catalog.open_inspection(three_nights.db).close()
    with open_db(three_nights.db) as con:
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone()[0] is True
