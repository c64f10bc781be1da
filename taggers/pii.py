"""PII tagger: counts and character spans of emails, phone numbers, IP addresses (v4, v6),
card numbers (Luhn-checked) and IBANs (mod-97-checked), found by ``core.pii``.

Tags only: the source shards are never changed. Redaction happens in exports
(``glia manifest export --redact-pii``, ``glia replay export --redact-pii``, the dataloader's
``redact_pii``), which replace the same spans (``core.pii`` is the one definition) with a
configurable placeholder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from glia.core.pii import KINDS, find_all
from glia.taggers.base import Resources, Tagger

SPAN = pa.struct([("kind", pa.string()), ("start", pa.int32()), ("end", pa.int32())])


class PIITagger(Tagger):
    """``pii_count``, ``pii_<kind>`` per kind and ``pii_spans`` (kind, start, end in characters)."""

    name: ClassVar[str] = "pii"
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources(batch_size=20_000)

    @dataclass(frozen=True)
    class Params:
        kinds: tuple[str, ...] = KINDS  # which kinds to look for

        def __post_init__(self) -> None:
            unknown = sorted(set(self.kinds) - set(KINDS))
            if unknown:
                raise ValueError(f"kinds: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")

    def schema(self) -> pa.Schema:
        return pa.schema([("doc_id", pa.string()), ("pii_count", pa.int32()),
                          *[(f"pii_{k}", pa.int32()) for k in KINDS], ("pii_spans", pa.list_(SPAN))])

    def tag(self, batch: pa.Table) -> pa.Table:
        spans = find_all(batch.column("text"), self.params.kinds)
        n = len(spans)
        counts = {k: np.zeros(n, dtype=np.int32) for k in KINDS}
        for i, doc in enumerate(spans):  # only documents with spans: the rest are empty lists
            for kind, _, _ in doc:
                counts[kind][i] += 1
        total = np.sum([counts[k] for k in KINDS], axis=0, dtype=np.int32) if n else np.zeros(0, np.int32)
        span_rows = [[{"kind": k, "start": s, "end": e} for k, s, e in doc] for doc in spans]
        return pa.table({"doc_id": batch.column("doc_id"), "pii_count": pa.array(total, pa.int32()),
                         **{f"pii_{k}": pa.array(counts[k], pa.int32()) for k in KINDS},
                         "pii_spans": pa.array(span_rows, pa.list_(SPAN))}, schema=self.schema())

    def stats(self, tags: pa.Table) -> dict[str, float]:
        out = {"docs_with_pii": float(np.count_nonzero(tags["pii_count"].to_numpy()))}
        out.update({k: float(tags[f"pii_{k}"].to_numpy().sum()) for k in KINDS})
        return out

    def config(self) -> dict[str, object]:
        return {"kinds": list(self.params.kinds)}
