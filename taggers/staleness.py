"""Staleness tagger: how old each document was when the night that tagged it started.

In a run the reference time is the run's start, bound per night with
:meth:`StalenessTagger.for_night`, never the wall clock while a shard is being tagged: every
shard of one night gets the same reference, and the reference is part of :meth:`config`, so a
cached tag file from another night is never reused.

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
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources(gpu=False, batch_size=50_000)

    @dataclass(frozen=True)
    class Params:
        max_age_days: float = 365.0  # a document older than this (by its timestamp) is stale

        def __post_init__(self) -> None:
            if not self.max_age_days >= 0:
                raise ValueError(f"max_age_days must be a number >= 0, got {self.max_age_days!r}")

    def __init__(self, **params: Any) -> None:
        self.max_age_days = self.configure(params).max_age_days
        # The reference time. Outside a run (a notebook, a test) it is the time the tagger was
        # built, so one instance always gives the same answer; a run rebinds it with for_night.
        self.as_of: datetime = datetime.now(timezone.utc)

    def for_night(self, night: NightInfo) -> StalenessTagger:
        """A copy bound to tonight's date: midnight UTC of the run's start (a naive time is
        taken as UTC, like shard timestamps). A day, not the second, so that a night rerun
        after a crash tags exactly what the uninterrupted run would have, and reuses its files."""
        bound = copy.copy(self)
        start = night.started_at
        start = (start if start.tzinfo else start.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
        bound.as_of = start.replace(hour=0, minute=0, second=0, microsecond=0)
        return bound

    def config(self) -> dict[str, object]:
        return {"max_age_days": self.max_age_days, "as_of": self.as_of.isoformat()}

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
