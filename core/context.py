"""What every step of a night is told: where the run reads and writes, and the shard columns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Columns:
    """Shard column names (``[columns]`` in the rules file). ``id`` and ``text`` are required in
    every shard."""

    id: str = "id"
    text: str = "text"
    source: str = "source"
    timestamp: str = "timestamp"
    label: str = "label"
    extra: tuple[str, ...] = ()

    def optional(self) -> dict[str, str]:
        """Canonical name -> shard column for the optional metadata columns."""
        out = {"source": self.source, "timestamp": self.timestamp, "label": self.label}
        out.update({c: c for c in self.extra})
        return out


@dataclass(frozen=True)
class RunContext:
    """Where a run reads and writes: what a night stage is told besides its own parameters.

    The engine's steps get a ``NightContext`` (``engine.pipeline``), which adds the run's whole
    configuration; a stage sees only this, so it depends on nothing above it.
    """

    root: str
    db_path: Path
    state_dir: Path
    run_id: int
    started_at: datetime
    columns: Columns = Columns()  # the shard columns tonight's documents were read from

    def tag_path(self, tagger_key: str, shard_id: str) -> Path:
        return self.state_dir / "tags" / tagger_key / f"{shard_id}.parquet"
