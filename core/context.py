"""What every step of a night is told: where the run reads and writes, and its configuration."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunContext:
    """Where a run reads and writes, and with which configuration.

    ``config`` is the engine's ``GliaConfig`` (``engine.config``). It is typed loosely here
    because this module sits below every layer that reads it; a stage should prefer its own
    typed parameters and read the run-wide parts (``columns``, ``run.stages``) only.
    """

    root: str
    db_path: Path
    state_dir: Path
    config: Any
    run_id: int
    started_at: datetime

    def tag_path(self, tagger_key: str, shard_id: str) -> Path:
        return self.state_dir / "tags" / tagger_key / f"{shard_id}.parquet"
