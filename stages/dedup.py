"""The ``dedup`` night stage: tonight's exact and near duplicates, against each other and
against every earlier night, traced to the ids they duplicate (see ``curation.dedup``)."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from glia.core.context import RunContext
from glia.curation.dedup import EXACT_DUP_SCHEMA, NEAR_DUP_SCHEMA, NearDup, Tonight, resolve
from glia.stages.base import NightStage, StageInputs, StageOutput
from glia.storage.catalog import Segment
from glia.storage.history import History, write_segments
from glia.taggers import registry

EXACT_DUP, NEAR_DUP = "exact_dup", "near_dup"
SIGNATURES = "minhash"  # the tagger whose signatures the stage compares


class DedupStage(NightStage):
    name = "dedup"
    version = "1"
    needs = ("exact", SIGNATURES)

    # [stages.dedup] (formerly [near_dup]): the LSH shape, the verification threshold, the bucket caps.
    Params = NearDup

    def __init__(self, **params: Any) -> None:
        self.configure(params)

    def outputs(self) -> dict[str, pa.Schema]:
        return {EXACT_DUP: EXACT_DUP_SCHEMA, NEAR_DUP: NEAR_DUP_SCHEMA}

    def tagger_params(self) -> dict[str, dict[str, Any]]:
        """The MinHash signature shape these settings compare: ``bands x rows`` permutations of
        word ``ngram``s under ``seed``."""
        p = self.params
        return {SIGNATURES: {"num_perm": p.num_perm, "ngram": p.ngram, "seed": p.seed}}

    def scheme(self) -> dict[str, object]:
        """What the stored history's signatures depend on, recorded with every segment: the
        signature tagger's version and the LSH shape (``engine.reindex`` moves a database to another)."""
        p = self.params
        tagger = registry.factory(SIGNATURES)
        return {"minhash": f"{tagger.name}@{tagger.version}", "bands": p.bands, "rows": p.rows, "ngram": p.ngram,
                "seed": p.seed}

    def load(self, con: duckdb.DuckDBPyConnection, ctx: RunContext) -> list[Segment]:
        from glia.storage.catalog import Catalog

        return Catalog.segments_of(con)

    def run(self, ctx: RunContext, state: list[Segment], inputs: StageInputs) -> StageOutput:
        scheme = self.scheme()
        for seg in state:
            if seg.kind == "signatures" and seg.params != scheme:
                raise ValueError(
                    f"the dedup history in {ctx.state_dir} was built with {seg.params}, but this run uses "
                    f"{scheme}; keep [stages.dedup] as it was, or run `glia reindex` to rebuild the history under the new "
                    "parameters"
                )
        exact_files, mh_files = inputs.files.get("exact", []), inputs.files.get(SIGNATURES, [])
        if not exact_files:
            return StageOutput()
        exact = pa.concat_tables([
            pq.read_table(f.path, columns=["doc_id", "text_hash"]).append_column(
                "shard_id", pa.array([f.shard_id] * f.n_rows, pa.string())) for f in exact_files])
        mh = pa.concat_tables([pq.read_table(f.path, columns=["doc_id", "_minhash"]) for f in mh_files])
        history = History(state, inputs.history_active, tmp_dir=ctx.state_dir / "tmp")
        try:
            res = resolve(Tonight.from_tables(exact, mh, ctx.run_id, inputs.first_seen), history,
                          ctx.run_id, self.params)
        finally:
            history.close()
        segments = write_segments(ctx.state_dir, ctx.run_id, res.segments, scheme)
        return StageOutput(
            tags={EXACT_DUP: res.exact, NEAR_DUP: res.near}, segments=segments,
            counts={"exact_dups": res.n_exact_dups, "near_dups": res.n_near_dups},
        )

    def config(self) -> dict[str, Any]:
        return {}
