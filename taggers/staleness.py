"""Staleness tagger: how far behind the corpus's newest document each document was on the night that tagged it.

The reference time is bound per night with :meth:`StalenessTagger.for_night`, never the wall
clock while a shard is being tagged: every shard of one night gets the same reference, and the
reference is part of :meth:`config`, so a cached tag file from another night is never reused.

``reference = "corpus"`` (the default) takes the corpus's own "now": the day of the newest
document timestamp among the active documents and tonight's shards (``NightInfo.newest``), or
the run's day when that is later (a timestamp from the future moves nothing). On a corpus
delivered as it is written the two are the same day; on a backfill, an archive or the example
corpus (written 2023-2025, run later) the run's day made every document stale: 100 % of the
example corpus and of the pruning benchmark's (``docs/pruning.md``). ``reference = "run"`` is
the run's day, the behaviour before tagger version 2.

Tags are written once per shard version, so ``age_days`` is the age *at the night the shard
was tagged*; an unchanged shard keeps its tags on later nights. For the age today, compute
it in SQL from ``timestamp`` (``v_documents`` has it).
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from glia.taggers.base import NightInfo, Resources, Tagger

_US_PER_DAY = 86_400 * 1_000_000


class StalenessTagger(Tagger):
    """``age_days``: days from the document's ``timestamp`` to the run's date (float32,
    negative for a timestamp after the start, null without a timestamp); ``stale``:
    ``age_days > max_age_days`` (null when ``age_days`` is)."""

    name: ClassVar[str] = "staleness"
    version: ClassVar[str] = "2"
    resources: ClassVar[Resources] = Resources(gpu=False, batch_size=50_000)

    @dataclass(frozen=True)
    class Params:
        max_age_days: float = 365.0  # a document older than this (by its timestamp) is stale
        reference: str = "corpus"  # "corpus": the newest document's day (capped at the run's); "run": the run's day

        def __post_init__(self) -> None:
            if not self.max_age_days >= 0:
                raise ValueError(f"max_age_days must be a number >= 0, got {self.max_age_days!r}")
            if self.reference not in ("corpus", "run"):
                raise ValueError(f"reference must be \"corpus\" or \"run\", got {self.reference!r}")

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        self.max_age_days = p.max_age_days
        self.reference = p.reference
        # The reference time. Outside a run (a notebook, a test) it is the time the tagger was
        # built, so one instance always gives the same answer; a run rebinds it with for_night.
        self.as_of: datetime = datetime.now(timezone.utc)

    def for_night(self, night: NightInfo) -> StalenessTagger:
        """A copy bound to tonight's reference day: midnight UTC of the run's start or, with
        ``reference = "corpus"``, of the newest document's timestamp when that is earlier (a
        naive time is taken as UTC, like shard timestamps). A day, not the second, so that a
        night rerun after a crash tags exactly what the uninterrupted run would have, and
        reuses its files."""
        bound = copy.copy(self)
        day = _day(night.started_at)
        if self.reference == "corpus" and night.newest is not None:
            day = min(day, _day(night.newest))
        bound.as_of = day
        return bound

    def config(self) -> dict[str, object]:
        return {"max_age_days": self.max_age_days, "reference": self.reference, "as_of": self.as_of.isoformat()}

    def stats(self, tags: pa.Table) -> dict[str, float]:
        return {"stale": float(pc.sum(tags["stale"]).as_py() or 0)}

    def schema(self) -> pa.Schema:
        return pa.schema([("doc_id", pa.string()), ("age_days", pa.float32()), ("stale", pa.bool_())])

    def tag(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        if "timestamp" not in batch.column_names:
            age = pa.nulls(n, pa.float64())
        else:
            ts = pc.cast(batch.column("timestamp"), pa.timestamp("us", tz="UTC"))
            ref = pa.scalar(self.as_of, pa.timestamp("us", tz="UTC"))
            micros = pc.cast(pc.subtract(ref, ts), pa.int64())
            age = pc.divide(pc.cast(micros, pa.float64()), float(_US_PER_DAY))
        return pa.table(
            {
                "doc_id": batch.column("doc_id"),
                "age_days": pc.cast(age, pa.float32()),
                "stale": pc.greater(age, self.max_age_days),
            },
            schema=self.schema(),
        )


def _day(t: datetime) -> datetime:
    """Midnight UTC of ``t``'s day (a naive time is taken as UTC)."""
    t = (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)
