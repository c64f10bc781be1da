"""Glia's dashboard: a read-only Streamlit app over the DuckDB catalog (``glia dashboard``).

    streamlit run dashboards/app.py -- --db glia.duckdb [--allow-files]     (or GLIA_DB=glia.duckdb)

Pages: the latest night and the trend over nights; tag distributions per source; the prune
queue with its reasons and filters; the protected strata; coverage against compression; one
document with its text, every tag and the decision with its reasons. Every query opens the
file read-only and closes it (``dashboards.data``), so a nightly run can commit meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` puts only this folder on the path

from glia.curation.summary import table, to_markdown  # noqa: E402
from glia.dashboards import data  # noqa: E402
from glia.dashboards.data import Db, DatabaseBusy  # noqa: E402

NOT_CONFIGURED = "Not configured: {what} appears when the `{stage}` stage runs (`[run].stages` in the rules file)."


def _db() -> Db:
    """The catalog from ``--db`` (or $GLIA_DB); ``--allow-files`` gives the pages full file access."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db", default=os.environ.get("GLIA_DB", "glia.duckdb"))
    parser.add_argument("--allow-files", action="store_true")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Db(Path(args.db), allow_files=args.allow_files)


DB = _db()


def _guard(page: Callable[[Db], None]) -> Callable[[], None]:
    """Run a page; a busy database or a missing one becomes a message, not a traceback."""

    def run() -> None:
        if not DB.path.exists():
            st.error(f"No Glia database at {DB.path}. Run `glia run SHARDS --db {DB.path}` first.")
            return
        try:
            page(DB)
        except DatabaseBusy as exc:
            st.warning(f"Database busy: {exc}")
            st.button("Retry")

    run.__name__ = page.__name__
    return run


def _bar(df: pd.DataFrame, x: str, y: str, color: str | None = None, title: str = "") -> alt.Chart:
    enc = {"x": alt.X(x, sort="-y" if color is None else None, title=x), "y": alt.Y(y, title=y),
           "tooltip": list(df.columns)}
    if color:
        enc["color"] = alt.Color(color)
    return alt.Chart(df, title=title).mark_bar().encode(**enc)


def _markdown_table(df: pd.DataFrame) -> str:
    """A small table as Markdown (plain HTML on the page: readable, copyable, searchable)."""
    rows = [["" if pd.isna(v) else (f"{v:,}" if isinstance(v, int) or hasattr(v, "__index__") else str(v)) for v in r]
            for r in df.itertuples(index=False)]
    return table(list(df.columns), rows)


def overview(db: Db) -> None:
    st.title("Glia: the latest night")
    night, reruns = db.latest_completed()
    s = db.summary(night)
    if s is None:
        st.info("No runs yet.")
        return
    if reruns:
        st.caption(f"{reruns} later run(s) found nothing new; this is the last night that changed the catalog.")
    trend = data.trend(db)
    last = trend[trend.run_id == s.run_id]
    cols = st.columns(6)
    cols[0].metric("run", s.run_id, s.status, delta_color="off")
    cols[1].metric("documents tonight", f"{s.totals['docs']:,}")
    cols[2].metric("exact duplicates", f"{s.totals['exact_dups']:,}")
    cols[3].metric("near duplicates", f"{s.totals['near_dups']:,}")
    for col, name in zip(cols[4:], ("pruned", "replayed")):
        value = None if last.empty else last.iloc[0][name]
        col.metric(name, "n/a" if value is None or pd.isna(value) else f"{int(value):,}")
    st.subheader("Trend over nights")
    long = trend.melt("run_id", ["docs", "pruned", "protected", "replayed"], "what", "documents").dropna()
    st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("run_id:O", title="run"), y="documents:Q", color="what:N", tooltip=["run_id", "what", "documents"]),
        use_container_width=True)
    if trend[["pruned", "protected"]].isna().all().all():
        st.caption(NOT_CONFIGURED.format(what="pruned and protected counts", stage="decide"))
    if trend["replayed"].isna().all():
        st.caption(NOT_CONFIGURED.format(what="the replayed count", stage="replay"))
    st.markdown(_markdown_table(trend.astype("Int64")))
    st.subheader(f"Summary of run {s.run_id}")
    st.markdown(to_markdown(s).split("\n", 1)[1])
    with st.expander("All runs"):
        st.dataframe(data.runs(db), hide_index=True)


def tags(db: Db) -> None:
    st.title("Tags per source")
    per_source = data.docs_per_source(db)
    st.altair_chart(_bar(per_source, "source", "documents", title="Active documents per source"), use_container_width=True)
    st.markdown(_markdown_table(per_source))
    columns = data.tag_columns(db)
    if not columns:
        st.info("No tag columns yet.")
        return
    names = sorted(columns)
    default = names.index("n_chars") if "n_chars" in names else 0
    column = st.selectbox("Tag", names, index=default)
    kind = columns[column]
    dist = data.tag_distribution(db, column, columns)
    if kind == "numeric":
        st.altair_chart(alt.Chart(dist).mark_bar().encode(
            x=alt.X("source:N"), y=alt.Y("p10:Q", title=column), y2="p90:Q", tooltip=list(dist.columns)) +
            alt.Chart(dist).mark_tick(color="black", thickness=2, size=30).encode(x="source:N", y="median:Q"),
            use_container_width=True)
        st.caption("Bars span the 10th to 90th percentile; the tick is the median.")
    elif kind == "boolean":
        st.altair_chart(_bar(dist, "source", "share_true", title=f"Share of documents with {column} true"),
                        use_container_width=True)
    elif kind == "list":
        st.altair_chart(_bar(dist, "source", "documents", color="item", title=f"{column} per source"), use_container_width=True)
    else:
        st.altair_chart(_bar(dist, "source", "with_value", title=f"Documents with a {column}"), use_container_width=True)
    st.table(dist.set_index("source") if kind != "list" else dist)


def prune_queue(db: Db) -> None:
    st.title("Prune queue")
    if not db.has("v_prune_queue"):
        st.info(NOT_CONFIGURED.format(what="The prune queue", stage="decide"))
        return
    reasons = data.prune_reasons(db)
    if not reasons.empty:
        st.altair_chart(_bar(reasons, "reason", "documents", color="status", title="Queued documents per reason"),
                        use_container_width=True)
    statuses = [r[0] for r in db.rows("SELECT DISTINCT status FROM v_prune_queue ORDER BY 1")]
    sources = [r[0] for r in db.rows("SELECT DISTINCT CAST(source AS VARCHAR) FROM v_prune_queue "
                                     "WHERE source IS NOT NULL ORDER BY 1")]
    c1, c2, c3, c4 = st.columns(4)
    chosen_status = c1.multiselect("Status", statuses)
    chosen_sources = c2.multiselect("Source", sources)
    reason = c3.text_input("Reason contains", "")
    doc = c4.text_input("Document id contains", "")
    total = db.rows("SELECT count(*) FROM v_prune_queue")[0][0]
    rows = data.prune_queue(db, chosen_status, chosen_sources, reason.strip(), doc.strip())
    st.markdown(f"**{len(rows):,} shown** of {total:,} documents in the queue (at most 500 shown; newest first).")
    st.dataframe(rows, hide_index=True, use_container_width=True)
    st.caption("Open one in the Document page by its id. Nothing here deletes anything: "
               "`glia undo` restores a queued document.")


def protected(db: Db) -> None:
    st.title("Protected strata")
    if not db.has("v_protected"):
        st.info(NOT_CONFIGURED.format(what="Protected strata", stage="decide"))
        return
    strata = data.protected_strata(db)
    if strata.empty:
        st.info("No document is protected.")
        return
    total = db.rows("SELECT count(DISTINCT doc_id) FROM v_protected")[0][0]
    st.markdown(f"**{total:,} protected documents** in {len(strata):,} strata.")
    st.altair_chart(_bar(strata, "stratum", "documents", title="Protected documents per stratum"), use_container_width=True)
    st.markdown(_markdown_table(strata))


def coverage(db: Db) -> None:
    st.title("Coverage vs compression")
    if not db.has("coverage"):
        st.info(NOT_CONFIGURED.format(what="Coverage", stage="decide"))
        return
    cov = data.coverage(db)
    if cov.empty:
        st.info("No night has been decided yet.")
        return
    long = cov.melt(["run_id", "compression"], ["source_coverage", "label_coverage", "cluster_coverage"],
                    "coverage_of", "coverage").dropna()
    st.altair_chart(alt.Chart(long, title="Coverage kept against the share pruned, per night").mark_line(point=True).encode(
        x=alt.X("compression:Q", title="compression (share of corpus pruned or queued)"),
        y=alt.Y("coverage:Q", scale=alt.Scale(domain=[0, 1])), color="coverage_of:N",
        tooltip=["run_id", "compression", "coverage_of", "coverage"]), use_container_width=True)
    st.markdown(_markdown_table(cov.round(4)))


def document(db: Db) -> None:
    st.title("Document")
    doc_id = st.text_input("Document id", st.query_params.get("doc_id", ""))
    if not doc_id:
        st.caption("Type a document id (from the prune queue, the duplicates or `v_documents`).")
        return
    st.query_params["doc_id"] = doc_id
    view = data.document(db, doc_id.strip())
    if view is None:
        st.warning(f"No document with id {doc_id!r} in the catalog.")
        return
    r = view.row
    st.markdown(f"**{r['doc_id']}** · source `{r.get('source')}` · label `{r.get('label')}` · "
                f"first seen in run {r.get('first_seen_run')} · `{r.get('shard_path')}` row {r.get('row')}")
    if view.decision is not None:
        d = view.decision
        reasons = "; ".join(d["reasons"]) if d["reasons"] is not None and len(d["reasons"]) else "none"
        verdict = f"Decision (run {d['run_id']}): **{d['action']}** — reasons: {reasons}"
        (st.error if d["action"] == "prune" else st.success)(verdict)
    if view.queue is not None:
        q = view.queue
        st.info(f"Prune queue: **{q['status']}** since run {q['changed_run']} (queued in run {q['queued_run']})")
    if view.protected:
        st.success("Protected: " + "; ".join(f"{p['stratum']} ({p['reason']})" for p in view.protected))
    if view.duplicate is not None:
        x = view.duplicate
        st.warning(f"{x['kind']} duplicate of **{x['survivor_id']}** (Jaccard {x['jaccard']:.3f}, cluster of "
                   f"{x['cluster_size']})")
    st.subheader("Text")
    if view.text is not None:
        st.text(view.text)
    else:
        st.caption(f"Text unavailable: {view.text_error}")
    st.subheader("Every tag")
    tags_df = pd.DataFrame({"tag": list(r), "value": [str(v) for v in r.values()]})
    st.table(tags_df.set_index("tag"))
    if view.replay is not None and not view.replay.empty:
        st.subheader("Replay sets")
        st.table(view.replay.set_index("set_id"))


PAGES = [
    st.Page(_guard(overview), title="Latest night", url_path="overview", default=True),
    st.Page(_guard(tags), title="Tags per source", url_path="tags"),
    st.Page(_guard(prune_queue), title="Prune queue", url_path="prune-queue"),
    st.Page(_guard(protected), title="Protected strata", url_path="protected"),
    st.Page(_guard(coverage), title="Coverage vs compression", url_path="coverage"),
    st.Page(_guard(document), title="Document", url_path="document"),
]

st.set_page_config(page_title="Glia", layout="wide")
st.sidebar.caption(f"Database (read-only): `{DB.path}`")
st.navigation(PAGES).run()
