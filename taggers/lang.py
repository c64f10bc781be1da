"""Language identification: ``lang`` (ISO 639-1 code, ``und`` when undetermined) and ``lang_score``.

Two backends, both shipping their models inside the PyPI package (no download at run time;
the ``[lang]`` extra):

- ``cld2`` (default, PyPI ``pycld2``): Chrome's Compact Language Detector 2, a C++ n-gram
  model over 80+ languages. ~12,000 docs/s on one core of this machine; accuracy 0.914 on
  ``bench/lang_corpus.py``'s seven-language set (``bench/bench_lang.py``).
- ``lingua`` (PyPI ``lingua-language-detector``): n-gram models of 75 languages, slower
  (~160 docs/s in high-accuracy mode) and more accurate (0.958 on the same set); for
  corpora of short, mixed texts where the extra hour per million documents is worth it.

``lang_score`` is the backend's confidence in the top language in [0, 1]: for ``cld2`` the
share of the text's bytes it assigned to that language, for ``lingua`` its confidence value.

With ``expected`` set (``[taggers.lang] expected = ["en"]``) the tagger also writes
``lang_unexpected`` (true when ``lang`` is not one of them, null when ``expected`` is empty),
which the built-in rule term ``lang_not_in`` reads; it is in no default rule.
Documents longer than ``max_chars`` are identified from their first ``max_chars`` characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.taggers.base import Resources, Tagger

UNDETERMINED = "und"
BACKEND_MODULE = {"cld2": "pycld2", "lingua": "lingua"}


class LangTagger(Tagger):
    """``lang``, ``lang_score`` and (with ``expected``) ``lang_unexpected`` per document."""

    name: ClassVar[str] = "lang"
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources(gpu=False, batch_size=10_000)

    @dataclass(frozen=True)
    class Params:
        backend: Literal["cld2", "lingua"] = "cld2"
        expected: tuple[str, ...] = ()  # ISO 639-1 codes; empty: no lang_unexpected judgement
        max_chars: int = 2_000  # identify from the first max_chars characters (speed on long documents)

        def __post_init__(self) -> None:
            if self.max_chars < 1:
                raise ValueError(f"max_chars must be >= 1, got {self.max_chars!r}")
            bad = [c for c in self.expected if not (isinstance(c, str) and c.isalpha() and c.islower() and 2 <= len(c) <= 3)]
            if bad:
                raise ValueError(f"expected: {bad!r} are not ISO 639-1 codes; write e.g. [\"en\", \"de\"]")

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        self.requires = (BACKEND_MODULE[p.backend],)
        self._detect: Any = None

    def schema(self) -> pa.Schema:
        return pa.schema([("doc_id", pa.string()), ("lang", pa.string()), ("lang_score", pa.float32()),
                          ("lang_unexpected", pa.bool_())])

    def config(self) -> dict[str, object]:
        return {"backend": self.params.backend, "expected": sorted(self.params.expected), "max_chars": self.params.max_chars}

    def _detector(self) -> Any:
        """The backend's ``list[str] -> (codes, scores)``, loaded once (lazily: the import is the slow part)."""
        if self._detect is None:
            self._detect = _cld2() if self.params.backend == "cld2" else _lingua()
        return self._detect

    def tag(self, batch: pa.Table) -> pa.Table:
        text = pc.utf8_slice_codeunits(batch.column("text"), 0, self.params.max_chars)
        codes, scores = self._detector()(text.to_pylist())
        lang = pa.array(codes, pa.string())
        if self.params.expected:
            unexpected = pc.invert(pc.is_in(lang, value_set=pa.array(sorted(self.params.expected), pa.string())))
        else:
            unexpected = pa.nulls(len(lang), pa.bool_())
        return pa.table({"doc_id": batch.column("doc_id"), "lang": lang,
                         "lang_score": pa.array(np.asarray(scores, np.float32)), "lang_unexpected": unexpected},
                        schema=self.schema())

    def stats(self, tags: pa.Table) -> dict[str, float]:
        out = {"undetermined": float(pc.sum(pc.equal(tags["lang"], UNDETERMINED)).as_py() or 0)}
        if self.params.expected:
            out["unexpected"] = float(pc.sum(tags["lang_unexpected"]).as_py() or 0)
        return out


def _cld2() -> Any:
    import pycld2

    def detect(texts: list[str]) -> tuple[list[str], list[float]]:
        codes: list[str] = []
        scores: list[float] = []
        for t in texts:  # cld2 has no batch call: one C call per document
            try:
                reliable, _, details = pycld2.detect(t)
            except pycld2.error:
                # cld2 refuses some control and surrogate characters: drop them and retry once.
                try:
                    reliable, _, details = pycld2.detect("".join(ch for ch in t if ch.isprintable() or ch.isspace()))
                except pycld2.error:
                    codes.append(UNDETERMINED)
                    scores.append(0.0)
                    continue
            code, percent = details[0][1], details[0][2]
            # cld2 says "un" for unknown; its few regional codes (zh-Hant) keep their base language.
            code = UNDETERMINED if code in ("un", "xxx") else code.split("-")[0]
            codes.append(code)
            scores.append(percent / 100.0 if code != UNDETERMINED else 0.0)
        return codes, scores
    return detect


def _lingua() -> Any:
    from lingua import LanguageDetectorBuilder

    det = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def detect(texts: list[str]) -> tuple[list[str], list[float]]:
        codes: list[str] = []
        scores: list[float] = []
        for conf in det.compute_language_confidence_values_in_parallel(texts):
            if conf and conf[0].value > 0:
                codes.append(conf[0].language.iso_code_639_1.name.lower())
                scores.append(float(conf[0].value))
            else:
                codes.append(UNDETERMINED)
                scores.append(0.0)
        return codes, scores
    return detect
