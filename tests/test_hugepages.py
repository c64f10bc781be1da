"""The night opts its process out of transparent huge pages while it runs ([run].huge_pages),
and leaves the process as it found it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import NIGHTS
from glia.core import hugepages
from glia.engine.config import ConfigError, GliaConfig, RunOptions, load_config
from glia.engine.night import ThreadExecutor, run_night

pytestmark = pytest.mark.skipif(hugepages.disabled() is None, reason="no prctl(PR_GET_THP_DISABLE) here")


class _Watching(ThreadExecutor):
    """Threads, noting whether the process was opted out each time the night submits a step."""

    def __init__(self) -> None:
        super().__init__(workers=2)
        self.seen: list[bool | None] = []

    def submit(self, step: Any, /, *args: Any) -> Any:
        self.seen.append(hugepages.disabled())
        return super().submit(step, *args)


def _night(tmp_path: Path, mode: str) -> list[bool | None]:
    cfg = GliaConfig(run=RunOptions(huge_pages=mode))
    with _Watching() as executor:
        run_night(NIGHTS[1], tmp_path / "glia.duckdb", cfg, executor=executor)
    return executor.seen


def test_the_night_runs_without_huge_pages_and_restores_the_process(tmp_path: Path) -> None:
    assert hugepages.disabled() is False
    seen = _night(tmp_path, "off")
    assert seen and all(seen)
    assert hugepages.disabled() is False


def test_system_leaves_the_kernel_setting(tmp_path: Path) -> None:
    assert _night(tmp_path, "system") and not any(_night(tmp_path / "again", "system"))


def test_overlapping_nights_restore_only_when_the_last_one_ends() -> None:
    with hugepages.huge_pages("off"):
        with hugepages.huge_pages("off"):
            assert hugepages.disabled() is True
        assert hugepages.disabled() is True
    assert hugepages.disabled() is False


def test_a_process_already_opted_out_stays_opted_out() -> None:
    prctl = hugepages._prctl()
    assert prctl is not None
    prctl(hugepages._PR_SET_THP_DISABLE, 1, 0, 0, 0)
    try:
        with hugepages.huge_pages("off"):
            pass
        assert hugepages.disabled() is True
    finally:
        prctl(hugepages._PR_SET_THP_DISABLE, 0, 0, 0, 0)


def test_an_unknown_mode_is_refused_naming_the_file(tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\nhuge_pages = "never"\n')
    with pytest.raises(ConfigError, match=r"glia\.toml \[run\]\.huge_pages must be 'off'.*'never'"):
        load_config(rules)


def test_the_setting_does_not_change_the_config_hash() -> None:
    assert GliaConfig(run=RunOptions(huge_pages="system")).hash() == GliaConfig().hash()
