"""Registry of night stages by name, and the order a night runs them in. Adding a stage is one
file plus one line in :data:`STAGES`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from glia.core.registry import Registry
from glia.stages.base import NightStage
from glia.storage.migrations import StageMigration

# Built-ins are named as "module:Class" and imported on first use (core.registry), so a stage's
# heavy dependencies (faiss, torch) load only when it runs.
STAGES: Registry[type[NightStage]] = Registry("stage", {
    "dedup": "glia.stages.dedup:DedupStage",
    "surprise": "glia.stages.surprise:SurpriseStage",
    "novelty": "glia.stages.novelty:NoveltyStage",
    "replay": "glia.stages.replay:ReplayStage",
    "decide": "glia.stages.decide:DecideStage",
    "semantic_dedup": "glia.stages.semantic_dedup:SemanticDedupStage",
})

# The stage class registered under a name, imported on first use.
stage_class = STAGES.get
# Names of every registered stage.
available = STAGES.names
# Register a stage as "module:Class" or as the class itself (raises if the name is taken).
register = STAGES.register


class UnmetNeedsError(ValueError):
    """A configured stage needs a tagger or stage output that tonight's configuration lacks."""


def build(names: Iterable[str], params: Mapping[str, Mapping[str, Any]], have: Iterable[str]) -> list[NightStage]:
    """Instantiate the configured stages in dependency order.

    A stage runs after every output it ``needs`` (tagger names in ``have``, or earlier stages'
    outputs) and after every configured stage it ``reads`` (optional inputs it uses when they
    run tonight); otherwise the configured order holds. A stage whose needs no configured tagger
    or stage provides raises :class:`UnmetNeedsError` naming them: it is never dropped silently.
    """
    names = list(names)
    stages = {n: stage_class(n)(**dict(params.get(n, {}))) for n in names}
    outputs_of = {n: {n, *s.outputs()} for n, s in stages.items()}
    provided = set(have).union(*outputs_of.values())
    for n, s in stages.items():
        missing = [x for x in s.needs if x not in provided]
        if missing:
            raise UnmetNeedsError(
                f"stage {n!r} needs {', '.join(map(repr, missing))}, which no tagger in [run].taggers or stage in "
                f"[run].stages produces; add {'it' if len(missing) == 1 else 'them'} or remove {n!r} from [run].stages")
    available_outputs = set(have)
    pending = list(names)
    ordered: list[NightStage] = []
    while pending:
        for n in pending:
            s = stages[n]
            blocked = any(m in s.reads or outputs_of[m] & set(s.needs) for m in pending if m != n)
            if not blocked and set(s.needs) <= available_outputs:
                ordered.append(s)
                available_outputs |= outputs_of[n]
                pending.remove(n)
                break
        else:
            raise UnmetNeedsError(f"stages {', '.join(map(repr, pending))} need or read each other in a cycle")
    return ordered


def migrations_for(names: Sequence[str]) -> dict[str, tuple[StageMigration, ...]]:
    """The schema migrations of the named stages' own tables (for ``Catalog.migrate``)."""
    return {n: stage_class(n).migrations for n in names if stage_class(n).migrations}
