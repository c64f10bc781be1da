"""core.registry: the one lazy "module:Class" registry behind the taggers and the night stages."""

from __future__ import annotations

import sys

import pytest

from glia.core.extras import EXTRA_OF_MODULE, MissingExtraError
from glia.core.registry import Registry
from glia.stages import registry as stage_registry
from glia.taggers import registry as tagger_registry


def test_a_builtin_is_imported_on_first_use_and_then_cached() -> None:
    sys.modules.pop("json.decoder", None)
    reg: Registry[type] = Registry("codec", {"json": "json.decoder:JSONDecoder"})
    assert "json.decoder" not in sys.modules and reg.names() == ["json"]
    cls = reg.get("json")
    assert cls is sys.modules["json.decoder"].JSONDecoder and reg.get("json") is cls


def test_unknown_names_taken_names_and_unregister() -> None:
    reg: Registry[type] = Registry("codec", {"json": "json.decoder:JSONDecoder"})
    with pytest.raises(KeyError, match=r"unknown codec 'yaml'; registered codecs: json"):
        reg.get("yaml")
    with pytest.raises(ValueError, match=r"a codec named 'json' is already registered"):
        reg.register("json", dict)
    reg.register("dict", dict)
    assert reg.get("dict") is dict and "dict" in reg
    reg.unregister("dict")
    reg.unregister("dict")  # a no-op the second time
    assert reg.names() == ["json"]


def test_a_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EXTRA_OF_MODULE, "glia_absent_model_stack", "models")
    reg: Registry[type] = Registry("tagger", {"big": "glia_absent_model_stack.head:Head"})
    with pytest.raises(MissingExtraError, match=r"tagger 'big' needs 'glia_absent_model_stack'.*pip install 'glia\[models\]'"):
        reg.get("big")
    assert reg.names() == ["big"]  # still registered, still lazy: installing the extra makes it work


def test_taggers_and_stages_share_the_one_implementation() -> None:
    assert isinstance(tagger_registry.TAGGERS, Registry) and isinstance(stage_registry.STAGES, Registry)
    assert tagger_registry.TAGGERS.kind == "tagger" and stage_registry.STAGES.kind == "stage"
    assert stage_registry.available() == ["decide", "dedup", "novelty", "replay", "semantic_dedup", "surprise"]
