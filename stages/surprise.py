"""The ``surprise`` night stage: tonight's loss of each document against a slow trace of its past.

Two timescales: the ``lm`` tagger's loss tonight is the fast signal; the slow one is a trace
kept across nights in the catalog table ``loss_traces``, one row per document (``scope =
'doc'``, key ``doc_id``) and one per source (``scope = 'source'``, key ``source``; documents
without a source share the key ``''``). Each trace is an exponentially weighted mean and
variance of loss. Tonight::

    surprise = (loss_tonight - slow_mean) / max(slow_std, min_std)

taken against, in order of preference (``surprise_basis``):

- ``doc``: the document's own trace, once it holds ``min_count`` scores (a rewritten shard
  brings an id back; the within-document spread is small, so ``min_std`` sets the scale);
- ``source``: its source's trace, once that holds ``min_source_count`` documents;
- ``night``: tonight's scored documents, all sources together (a new source on a new database).

``loss_slow_mean`` and ``loss_slow_std`` are the mean and the (floored) std actually used, so
``surprise`` can be recomputed from the row. Documents the tagger did not score get nulls.

Trace updates (after surprise is computed against the old trace). A trace with ``n``
observations meets ``k`` new ones with mean ``m`` and variance ``v`` (a document: ``k = 1``,
``v = 0``; a source: its scored documents tonight), with weight ``w = max(alpha, k / (n + k))``::

    mean' = (1 - w) mean + w m
    var'  = (1 - w) var + w v + w (1 - w) (m - mean)^2
    n'    = n + k

While ``k / (n + k)`` exceeds ``alpha`` this is exactly the pooled mean and variance of all
observations; after that it is an EMA at rate ``alpha`` per night, so the trace follows slow
drift (e.g. a scoring model that keeps training) and tonight's change stands out. A source's
update does not depend on the order of its documents.

State and atomicity: :meth:`SurpriseStage.load` reads the traces (read-only, four numbers per
document: ~50 bytes a trace, so millions fit; it writes nothing, so a night with nothing new
leaves no file behind); :meth:`SurpriseStage.run` returns the updated rows as an upsert
(``TableWrite`` keyed by scope and key) committed with the run. A crash before the commit
changes no trace, and the rerun computes the same numbers.

Each run also records its scoring model(s) in ``scoring_models``: identity (a hash of the
weights: the trainer's newest checkpoint may score tomorrow), path, device, dtype, counts,
tokens and seconds. Traces keep the ``model_id`` of their last update.

Not done: rescoring a sample of earlier documents each night so that document traces fill up
without shards being rewritten. It needs the earlier texts (the stage sees tonight's shards
only) and the model inside a stage; today a document trace grows when its id comes back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from glia.core.context import RunContext
from glia.stages.base import NightStage, StageInputs, StageOutput
from glia.storage.catalog import TableWrite
from glia.storage.parquet_io import read_metadata

SURPRISE_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("surprise", pa.float32()), ("surprise_basis", pa.string()),
    ("loss_slow_mean", pa.float32()), ("loss_slow_std", pa.float32()),
])

TRACE_COLUMNS = ("scope", "key", "n", "mean", "var", "last_loss", "last_run", "model_id")

DDL = """
CREATE TABLE IF NOT EXISTS loss_traces (
    scope VARCHAR NOT NULL,      -- 'doc' | 'source'
    key VARCHAR NOT NULL,        -- doc_id, or source ('' for documents without one)
    n BIGINT NOT NULL,           -- losses seen (a source: documents scored, all nights)
    mean DOUBLE NOT NULL,        -- slow mean of loss (nats/token)
    var DOUBLE NOT NULL,         -- slow variance of loss
    last_loss DOUBLE,            -- the latest loss (a source: the latest night's mean)
    last_run INTEGER,            -- run that last updated the trace
    model_id VARCHAR,            -- scoring model of that run
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS scoring_models (
    run_id INTEGER NOT NULL,
    model_id VARCHAR NOT NULL,   -- <source>@sha256:<weights hash>
    model_path VARCHAR,
    device VARCHAR,
    dtype VARCHAR,
    max_tokens INTEGER,
    sample_rate DOUBLE,          -- share of the night sampled for scoring
    utility_params VARCHAR,      -- parameter subset of the gradient utility (NULL: none)
    n_docs BIGINT,               -- documents tonight
    n_scored BIGINT,
    n_sampled_out BIGINT,        -- not scored (outside the sample, or too short)
    tokens BIGINT,               -- tokens fed to the model
    seconds DOUBLE,              -- model wall time
    PRIMARY KEY (run_id, model_id)
);
"""

# The schema of these tables (see storage.migrations.StageMigration); add a migration to change it.
MIGRATIONS: tuple[tuple[int, str, str], ...] = ((1, "loss_traces, scoring_models", DDL),)


@dataclass(frozen=True)
class TraceState:
    """What :meth:`SurpriseStage.load` read: the document and the source traces."""

    docs: pa.Table
    sources: pa.Table


class SurpriseStage(NightStage):
    """Per-document surprise of tonight's loss against slow per-document / per-source traces."""

    name = "surprise"
    version = "1"
    needs = ("lm",)
    migrations = MIGRATIONS

    @dataclass(frozen=True)
    class Params:
        alpha: float = 0.1  # weight of tonight in the slow running average
        min_std: float = 0.1  # floor of the slow standard deviation
        min_count: int = 1  # nights of a document's own history before its own trace is used
        min_source_count: int = 10  # documents of a source before the source's trace is used

        def __post_init__(self) -> None:
            if not 0.0 < self.alpha <= 1.0:
                raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
            if not self.min_std > 0.0:
                raise ValueError(f"min_std must be > 0 (it floors the slow std), got {self.min_std!r}")
            for key in ("min_count", "min_source_count"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key} must be an integer >= 1, got {getattr(self, key)!r}")

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        self.alpha, self.min_std, self.min_count, self.min_source_count = p.alpha, p.min_std, p.min_count, p.min_source_count

    def outputs(self) -> dict[str, pa.Schema]:
        return {"surprise": SURPRISE_SCHEMA}

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "min_std": self.min_std, "min_count": self.min_count,
                "min_source_count": self.min_source_count}

    # -- state ----------------------------------------------------------------------------

    def load(self, con: duckdb.DuckDBPyConnection, ctx: RunContext) -> TraceState:
        def read(scope: str) -> pa.Table:
            return con.sql(f"SELECT key, n, mean, var FROM loss_traces WHERE scope = '{scope}'").to_arrow_table()

        return TraceState(read("doc"), read("source"))

    # -- tonight --------------------------------------------------------------------------

    def run(self, ctx: RunContext, state: TraceState, inputs: StageInputs) -> StageOutput:
        if not inputs.files.get("lm"):
            return StageOutput()
        lm = inputs.read("lm", ["loss", "lm_scored", "lm_tokens", "utility_params", "_lm_seconds"])
        files = inputs.files["lm"]
        meta = {f.shard_id: (read_metadata(Path(f.path)) or {}).get("config", {}) for f in files}
        model_of = pa.table({"shard_id": list(meta), "model_id": [m.get("model_id", "unknown") for m in meta.values()]})
        docs = inputs.documents.select(["doc_id", "source"])
        con = duckdb.connect(":memory:")
        try:
            for name, table in (("lm", lm), ("docs", docs), ("model_of", model_of), ("doc_traces", state.docs),
                                ("src_traces", state.sources)):
                con.register(name, table)
            tags, writes, counts = self._compute(con, ctx.run_id)
            writes.append(TableWrite("scoring_models", _scoring_rows(con, ctx.run_id, meta), key=("run_id", "model_id")))
        finally:
            con.close()
        return StageOutput(tags={"surprise": tags}, writes=writes, counts=counts)

    def _compute(self, con: duckdb.DuckDBPyConnection, run_id: int) -> tuple[pa.Table, list[TableWrite], dict[str, float]]:
        a, floor = self.alpha, self.min_std
        con.execute("""
            CREATE TEMP TABLE t AS
            SELECT l.doc_id, l.shard_id, l.loss::DOUBLE AS loss, coalesce(CAST(d.source AS VARCHAR), '') AS source,
                   m.model_id
            FROM lm l LEFT JOIN docs d USING (doc_id) LEFT JOIN model_of m USING (shard_id)""")
        night = con.execute("SELECT avg(loss), coalesce(var_pop(loss), 0) FROM t WHERE loss IS NOT NULL").fetchall()[0]
        night_mean, night_var = (night[0], night[1]) if night[0] is not None else (math.nan, 0.0)
        con.execute(f"""
            CREATE TEMP TABLE s AS
            SELECT t.doc_id, t.shard_id, t.loss, t.source, t.model_id,
                   dt.n AS d_n, dt.mean AS d_mean, dt.var AS d_var,
                   CASE WHEN dt.n >= {self.min_count} THEN 'doc'
                        WHEN st.n >= {self.min_source_count} THEN 'source' ELSE 'night' END AS basis,
                   CASE WHEN dt.n >= {self.min_count} THEN dt.mean
                        WHEN st.n >= {self.min_source_count} THEN st.mean ELSE ?::DOUBLE END AS slow_mean,
                   greatest(sqrt(CASE WHEN dt.n >= {self.min_count} THEN dt.var
                        WHEN st.n >= {self.min_source_count} THEN st.var ELSE ?::DOUBLE END), {floor}) AS slow_std
            FROM t LEFT JOIN doc_traces dt ON dt.key = t.doc_id LEFT JOIN src_traces st ON st.key = t.source
            WHERE t.loss IS NOT NULL""", [night_mean, night_var])
        tags = con.sql("""
            SELECT t.doc_id, t.shard_id, ((s.loss - s.slow_mean) / s.slow_std)::FLOAT AS surprise,
                   s.basis AS surprise_basis, s.slow_mean::FLOAT AS loss_slow_mean, s.slow_std::FLOAT AS loss_slow_std
            FROM t LEFT JOIN s USING (doc_id) ORDER BY t.shard_id, t.doc_id""").to_arrow_table()
        # One update rule for both scopes (module docstring): w = max(alpha, k / (n + k)).
        doc_rows = con.sql(f"""
            WITH u AS (SELECT doc_id AS key, coalesce(d_n, 0) AS n0, d_mean AS m0, d_var AS v0, loss, model_id,
                              greatest({a}, 1.0 / (coalesce(d_n, 0) + 1)) AS w FROM s)
            SELECT 'doc' AS scope, key, n0 + 1 AS n,
                   CASE WHEN n0 = 0 THEN loss ELSE (1 - w) * m0 + w * loss END AS mean,
                   CASE WHEN n0 = 0 THEN 0.0 ELSE (1 - w) * v0 + w * (1 - w) * (loss - m0) ^ 2 END AS var,
                   loss AS last_loss, {int(run_id)}::INTEGER AS last_run, model_id
            FROM u""").to_arrow_table()
        src_rows = con.sql(f"""
            WITH k AS (SELECT source, count(*) AS k, avg(loss) AS m, var_pop(loss) AS v, min(model_id) AS model_id
                       FROM s GROUP BY source),
                 u AS (SELECT k.*, coalesce(st.n, 0) AS n0, st.mean AS m0, st.var AS v0,
                              greatest({a}, k.k / (coalesce(st.n, 0) + k.k)) AS w
                       FROM k LEFT JOIN src_traces st ON st.key = k.source)
            SELECT 'source' AS scope, source AS key, n0 + k AS n,
                   CASE WHEN n0 = 0 THEN m ELSE (1 - w) * m0 + w * m END AS mean,
                   CASE WHEN n0 = 0 THEN v ELSE (1 - w) * v0 + w * v + w * (1 - w) * (m - m0) ^ 2 END AS var,
                   m AS last_loss, {int(run_id)}::INTEGER AS last_run, model_id
            FROM u ORDER BY key""").to_arrow_table()
        traces = pa.concat_tables([doc_rows, src_rows]).select(list(TRACE_COLUMNS))
        basis = dict(con.execute("SELECT basis, count(*) FROM s GROUP BY basis").fetchall())
        high = con.execute("SELECT count(*) FROM s WHERE (loss - slow_mean) / slow_std > 3").fetchall()[0][0]
        counts: dict[str, float] = {
            "scored": sum(basis.values()), "basis_doc": basis.get("doc", 0), "basis_source": basis.get("source", 0),
            "basis_night": basis.get("night", 0), "surprise_gt_3": high,
            "traces_doc": doc_rows.num_rows, "traces_source": src_rows.num_rows,
        }
        return tags, [TableWrite("loss_traces", traces, key=("scope", "key"))], counts


def _scoring_rows(con: duckdb.DuckDBPyConnection, run_id: int, meta: dict[str, dict[str, Any]]) -> pa.Table:
    """One ``scoring_models`` row per scoring model that produced tonight's ``lm`` files."""
    from glia.models.lm import resolve_source

    models: dict[str, dict[str, Any]] = {}
    for cfg in meta.values():
        mid = cfg.get("model_id", "unknown")
        if mid in models:
            continue
        try:
            path = str(resolve_source(cfg.get("model", "smollm2"), cfg.get("gguf_file")).path)
        except (FileNotFoundError, ValueError):  # moved since it scored: the id still names it
            path = cfg.get("model")
        models[mid] = {"model_path": path, "device": cfg.get("device"), "dtype": cfg.get("dtype"),
                       "max_tokens": cfg.get("max_tokens"), "sample_rate": cfg.get("sample_rate")}
    con.register("model_info", pa.Table.from_pylist([{"model_id": k, **v} for k, v in models.items()]))
    return con.sql(f"""
        SELECT {int(run_id)}::INTEGER AS run_id, t.model_id, i.model_path, i.device, i.dtype,
               i.max_tokens::INTEGER AS max_tokens, i.sample_rate::DOUBLE AS sample_rate,
               min(l.utility_params) AS utility_params, count(*) AS n_docs,
               count(*) FILTER (WHERE l.lm_scored) AS n_scored, count(*) FILTER (WHERE NOT l.lm_scored) AS n_sampled_out,
               coalesce(sum(l.lm_tokens), 0)::BIGINT AS tokens, coalesce(sum(l._lm_seconds), 0)::DOUBLE AS seconds
        FROM t JOIN lm l USING (doc_id) JOIN model_info i USING (model_id)
        GROUP BY ALL ORDER BY t.model_id""").to_arrow_table()
