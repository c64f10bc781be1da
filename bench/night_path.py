"""Glia's night for the benchmarks: the engine itself (``engine.night.run_night``, as ``glia run``
runs it without Prefect), with an optional checkpoint after each step for memory probes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from glia.core import progress
from glia.engine.config import GliaConfig
from glia.engine.night import ThreadExecutor, run_night
from glia.engine.pipeline import stages_for


class _Steps:
    """A progress reporter that calls ``mark(step)`` as the night moves from one step to the next:
    ``prepare`` when ingest starts, ``ingest+tag`` when the first night stage (or the commit)
    starts, ``stages`` when the commit starts: the night's own progress events."""

    def __init__(self, mark: Callable[[str], None], stage_names: set[str]) -> None:
        self.mark, self.stage_names, self.done = mark, stage_names, set()

    def _step(self, step: str) -> None:
        if step not in self.done:
            self.done.add(step)
            self.mark(step)

    def start(self, stage: str, total: int) -> None:
        if stage == "ingest":
            self._step("prepare")
        elif stage in self.stage_names:
            self._step("ingest+tag")
        elif stage == "finalize":
            self._step("ingest+tag")
            self._step("stages")

    def advance(self, stage: str, n: int = 1) -> None:
        pass


def glia_night(shards_root: Path | str, db: Path, cfg: GliaConfig, workers: int = 2,
               checkpoint: Callable[[str], None] | None = None) -> tuple[float, dict]:
    """One night; returns (seconds, the run's counts). ``checkpoint(step)`` is called after
    each of ``prepare``, ``ingest+tag``, ``stages`` and ``commit`` (e.g. to read peak memory)."""
    mark = checkpoint or (lambda step: None)
    t0 = time.perf_counter()
    progress.install(_Steps(mark, {s.name for s in stages_for(cfg)}))
    try:
        with ThreadExecutor(workers) as executor:
            outcome = run_night(shards_root, db, cfg, None, executor)
    finally:
        progress.install(None)
    mark("commit")
    if outcome.status not in ("completed", "nothing_new"):
        raise RuntimeError(f"the benchmark night ended {outcome.status}")
    return time.perf_counter() - t0, outcome.counts
