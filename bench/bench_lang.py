"""Language identifiers compared on ``bench/lang_corpus.py``'s set: accuracy and docs/s on this CPU.

Usage (from the repository root)::

    .venv/bin/python bench/lang_corpus.py                  # build/lang_bench.parquet
    .venv/bin/python bench/bench_lang.py --per-lang 300    # one line per candidate

Each candidate runs single-threaded over the same texts (``--per-lang`` of each language,
sampled with a fixed seed) with its model loaded from its installed package (no downloads:
run it with no network to check). Accuracy is the share of texts whose predicted ISO 639-1
code equals the package's language; ``acc_min`` is the worst language's accuracy. A
candidate that is not installed is reported as such.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def _lingua(low_accuracy: bool) -> Callable[[list[str]], list[str]]:
    from lingua import LanguageDetectorBuilder
    b = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
    if low_accuracy:
        b = b.with_low_accuracy_mode()
    det = b.build()
    return lambda texts: [(r.iso_code_639_1.name.lower() if r is not None else "und") for r in det.detect_languages_in_parallel_of(texts)]


def _langid() -> Callable[[list[str]], list[str]]:
    from langid.langid import LanguageIdentifier, model
    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return lambda texts: [ident.classify(t)[0] for t in texts]


def _pycld2() -> Callable[[list[str]], list[str]]:
    import pycld2

    def detect(t: str) -> str:
        try:
            return pycld2.detect(t)[2][0][1]
        except pycld2.error:
            return "und"
    return lambda texts: [detect(t) for t in texts]


def _gcld3() -> Callable[[list[str]], list[str]]:
    import gcld3
    det = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    return lambda texts: [det.FindLanguage(text=t).language for t in texts]


def _glia() -> Callable[[list[str]], list[str]]:
    import pyarrow as pa
    from glia.taggers.lang import LangTagger
    tagger = LangTagger()
    return lambda texts: tagger.tag(pa.table({"doc_id": [str(i) for i in range(len(texts))], "text": texts}))["lang"].to_pylist()


# name -> (module, factory): the factory loads the model (not timed) and returns the predictor.
CANDIDATES: dict[str, tuple[str, Callable[[], Callable[[list[str]], list[str]]]]] = {
    "lingua (high accuracy)": ("lingua", lambda: _lingua(False)),
    "lingua (low accuracy)": ("lingua", lambda: _lingua(True)),
    "langid": ("langid", _langid),
    "pycld2": ("pycld2", _pycld2),
    "gcld3": ("gcld3", _gcld3),
    "glia lang tagger (default)": ("glia.taggers.lang", _glia),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "build" / "lang_bench.parquet"))
    p.add_argument("--per-lang", type=int, default=300)
    p.add_argument("--only", nargs="*", default=None)
    a = p.parse_args(argv)
    t = pq.read_table(a.data)
    all_gold = np.array(t["lang"].to_pylist())
    rng = np.random.default_rng(0)
    take = np.concatenate([rng.permutation(np.flatnonzero(all_gold == lang))[: a.per_lang] for lang in sorted(set(all_gold))])
    texts, gold = t["text"].take(take).to_pylist(), all_gold[take]
    print(f"{len(texts)} texts, {len(set(gold))} languages, mean {np.mean([len(x) for x in texts]):.0f} chars")
    for name, (module, factory) in CANDIDATES.items():
        if a.only and not any(o in name for o in a.only):
            continue
        if importlib.util.find_spec(module.split(".")[0]) is None:
            print(json.dumps({"candidate": name, "status": "not installed"}))
            continue
        fn = factory()  # load the model outside the timing
        fn(texts[:5])
        t0 = time.perf_counter()
        pred = np.array(fn(texts))
        dt = time.perf_counter() - t0
        per = {lang: float(np.mean(pred[gold == lang] == lang)) for lang in sorted(set(gold))}
        print(json.dumps({"candidate": name, "docs_per_s": round(len(texts) / dt), "accuracy": round(float(np.mean(pred == gold)), 4),
                          "acc_min": round(min(per.values()), 4), "per_lang": {k: round(v, 3) for k, v in per.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
