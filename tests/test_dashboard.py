"""The dashboard, driven by a real browser over a database from a real run of the example corpus.

Two nights of ``examples/commons`` (with the ``decide`` and ``replay`` stages) go into a fresh
catalog; ``glia dashboard``'s Streamlit app serves it on 127.0.0.1; headless Chromium (Debian's
``chromium`` + ``chromium-driver``) opens every page, and the numbers on the pages are checked
against SQL over the same database. A screenshot of the main page is saved (to
``$GLIA_SCREENSHOT_DIR`` too, when set: that is how ``docs/dashboard.png`` is made).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, cli_env, free_port, query, run_night, wait_healthy

# The risk tagger's string tag (risk_model, e.g. "lstm-tox_block@452c457c") holds an "@", as the
# per-source summary metrics do ("...@<source>"): the pages must not take it for a source. The
# numpy LSTM backend: the default's MiniLM pass would add minutes to three nights.
RULES = ('[run]\ntaggers = ["exact", "minhash", "risk"]\nstages = ["dedup", "decide", "replay"]\n'
         '[taggers.risk]\nbackend = "lstm"\n')


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        msg = "headless Chromium is not installed (apt-get install chromium chromium-driver; `make test` does it as root)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return chromium, driver


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("dashboard")
    rules = base / "glia.toml"
    rules.write_text(RULES)
    root = base / "shards"
    root.mkdir()
    path = base / "glia.duckdb"
    for n in (1, 2):
        shutil.copytree(NIGHTS[n], root / f"night{n}")
        assert run_night(root, path, rules).status == "completed"
    assert run_night(root, path, rules).status == "nothing_new"  # run 3: no night of its own on the pages
    return path


@pytest.fixture(scope="module")
def app(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from glia.cli.dashboard import dashboard_command

    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    log = log_path.open("w")
    proc = subprocess.Popen(dashboard_command(db, "127.0.0.1", port), env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/_stcore/health", proc, log_path, 60, "the dashboard")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium, driver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1900"):
        opts.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        yield b
    finally:
        b.quit()


def page_text(browser, url: str, expect: str, *more: str, timeout: float = 60) -> str:
    """Load ``url`` and wait until its text (whitespace folded) contains ``expect`` and every
    one of ``more`` (Streamlit renders a page piece by piece)."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = " ".join(browser.find_element(By.TAG_NAME, "body").text.split())
        if all(e in text for e in (expect, *more)):
            return text
        assert "Traceback" not in text, text[:3000]
        time.sleep(0.3)
    missing = [e for e in (expect, *more) if e not in text]
    pytest.fail(f"{url}: {missing!r} not on the page within {timeout} s; it shows: {text[:3000]}")


def n(value: float | int) -> str:
    return f"{int(value):,}"


def test_pages_show_the_numbers_in_the_database(app: str, db: Path, browser, tmp_path: Path) -> None:
    # Latest night and trend: docs, pruned, protected, replayed per night, as SQL sees them.
    trend = query(db, "SELECT r.run_id, r.n_docs, c.n_pruned, c.n_protected, s.n_items FROM runs r "
                      "JOIN coverage c USING (run_id) JOIN replay_sets s USING (run_id) ORDER BY r.run_id")
    assert len(trend) == 2
    latest = trend[-1]
    keep, prune = (query(db, "SELECT count(*) FROM decisions WHERE run_id = ? AND action = ?", [latest[0], a])[0][0]
                   for a in ("keep", "prune"))
    sources = [s for (s,) in query(db, "SELECT DISTINCT CAST(source AS VARCHAR) FROM documents ORDER BY 1")]
    text = page_text(browser, f"{app}/", "Trend over nights",
                     *(f"{run_id} {n(docs)} {n(pruned)} {n(prot)} {n(replayed)}" for run_id, docs, pruned, prot, replayed in trend),
                     f"documents tonight {n(latest[1])}", f"keep {n(keep)}", f"prune {n(prune)}",
                     f"Summary of run {latest[0]}", "1 later run(s) found nothing new",
                     "Documents per source all " + " ".join(sources), "Time per step")
    # The nothing_new rerun (run 3) is no night of 0 documents in the trend.
    trend_table = text[text.index("Trend over nights"):text.index(f"Summary of run {latest[0]}")]
    assert "run_id docs pruned protected replayed 1 " in trend_table and " 3 0" not in trend_table, trend_table
    # Columns per source are the sources, not pieces of a tag value that holds an "@".
    (model,) = query(db, "SELECT DISTINCT risk_model FROM v_documents")[0]
    assert "@" in model and f"{model.rpartition('@')[2]}@" not in text
    # Time per step names taggers as taggers and stages as stages.
    assert "tagger risk" in text and "stage dedup" in text and "stage risk" not in text
    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("GLIA_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["GLIA_SCREENSHOT_DIR"]) / "dashboard.png")

    # Tags per source: active documents and duplicates per source.
    per_source = query(db, "SELECT CAST(d.source AS VARCHAR), count(*), count(x.doc_id) FROM documents d "
                           "LEFT JOIN v_duplicates x USING (doc_id) GROUP BY 1 ORDER BY 1")
    page_text(browser, f"{app}/tags", "Active documents per source",
              *(f"{source} {n(docs)} {n(dups)}" for source, docs, dups in per_source))

    # Prune queue: the count, and the filter (a bound parameter) narrows it.
    total = query(db, "SELECT count(*) FROM v_prune_queue")[0][0]
    assert total > 0
    page_text(browser, f"{app}/prune-queue", f"{n(total)} shown of {n(total)} documents in the queue")

    # Protected strata.
    prot = query(db, "SELECT count(DISTINCT doc_id), count(DISTINCT stratum) FROM v_protected")[0]
    strata = query(db, "SELECT stratum, count(DISTINCT doc_id) FROM v_protected GROUP BY 1 ORDER BY 2 DESC, 1")
    page_text(browser, f"{app}/protected", f"{n(prot[0])} protected documents in {n(prot[1])} strata",
              *(f"{stratum} {n(docs)}" for stratum, docs in strata))

    # Coverage vs compression.
    cov = query(db, "SELECT run_id, round(pruned_share, 4), active_docs FROM coverage ORDER BY run_id")
    page_text(browser, f"{app}/coverage", "Coverage kept against the share pruned", f"{cov[-1][0]} {cov[-1][1]}",
              *(n(active) for _, _, active in cov))

    # The rule's order against random pruning: at 20 % pruned fewer flagged documents stay than at random.
    from glia.dashboards import data

    curve = data.pruning_curve(data.Db(db))
    flagged = curve[curve.stratum == "flagged"].pivot(index="pruned_share", columns="order", values="value").round(4)
    at20 = flagged.iloc[4]
    assert at20["rule (lowest priority first)"] < at20["random"]
    page_text(browser, f"{app}/coverage", "The rule's order against random pruning", "Documents kept per source",
              f"{flagged.index[4].round(4)} {at20['random']} {at20['rule (lowest priority first)']}")

    # One pruned document: its text from the shard, its tags and its decision with reasons.
    doc_id, path, row, reasons = query(
        db, "SELECT d.doc_id, d.shard_path, d.\"row\", x.reasons FROM decisions x JOIN documents d USING (doc_id) "
            "WHERE x.action = 'prune' ORDER BY d.doc_id LIMIT 1")[0]
    first_line = pq.read_table(path, columns=["text"])["text"][row].as_py().strip().splitlines()[0]
    page_text(browser, f"{app}/document?doc_id={doc_id}", "Every tag", "Decision (run", ": prune — reasons:",
              " ".join(first_line.split()), *(" ".join(reason.split()) for reason in reasons))


def test_busy_database_shows_a_message_then_recovers(app: str, db: Path, browser) -> None:
    """While a writer holds the file (as a nightly run does), the page says so; afterwards it reads again."""
    writer = duckdb.connect(str(db))  # the write lock: no other process may open the file meanwhile
    try:
        page_text(browser, f"{app}/", "Database busy")
    finally:
        writer.close()
    docs = query(db, "SELECT n_docs FROM runs WHERE status = 'completed' ORDER BY run_id DESC LIMIT 1")[0][0]
    page_text(browser, f"{app}/", f"documents tonight {n(docs)}")


def test_filters_are_parameters_not_sql(db: Path) -> None:
    """User text goes in as bound parameters: SQL in a filter matches nothing and changes nothing."""
    from glia.dashboards import data

    d = data.Db(db)
    before = query(db, "SELECT count(*) FROM prune_queue")[0][0]
    evil = "x' OR 1=1; DROP TABLE runs; --"
    assert data.prune_queue(d, reason=evil).empty
    assert data.prune_queue(d, doc_id=evil).empty
    assert data.document(d, evil) is None
    assert len(data.prune_queue(d, reason="near_dup_of")) > 0
    assert query(db, "SELECT count(*) FROM prune_queue")[0][0] == before
    assert query(db, "SELECT count(*) FROM runs")[0][0] == 3
