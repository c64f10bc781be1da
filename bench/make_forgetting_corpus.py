"""Build the forgetting benchmark's corpus: three nights of real text with a hard shift after night 1.

Usage (from the repository root; ``bench/corpus_inputs.py fetch`` first fetches the pinned inputs)::

    .venv/bin/python bench/make_forgetting_corpus.py            # writes examples/forgetting/

Night 1 covers four sources of the pinned bench inputs (``bench/corpus_inputs.py``): two
common ones (Austen, the King James Bible) and two rare ones (the Jargon File, The Devil's
Dictionary, each a few % of the night). Nights 2 and 3 shift hard: they are Shakespeare's
plays only, a source night 1 never had, so a model that keeps training on them alone forgets
night 1's sources. Every chunk is used once.

Written beside the shards (the benchmark reads all of it; the shards are what Glia sees):

- ``night{1,2,3}/part-0000{0,1}.parquet``: the training documents (``id, text, source, label,
  timestamp``, the example corpus's columns);
- ``heldout.parquet``: documents never trained on and never shown to Glia, with ``night``:
  night 1's held-out slice (a fixed number per source, so the rare sources have enough to
  measure) and nights 2-3's held-out slice (plasticity);
- ``do_not_forget.txt``: ids of night-1 *training* documents of the common sources that a
  user asks Glia to protect (the ``[stages.decide.protect.explicit.do_not_forget]`` id file);
  the benchmark measures the loss on exactly these documents;
- ``corpus.json``: the counts, the parameters and each input's sha256.

Documents are 400-1,000 characters, longer than the LM's context window plus one, so every
training window is full and equal step counts mean equal training tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))

import corpus_inputs  # noqa: E402

OUT = ROOT / "examples" / "forgetting"
MIN_CHARS, MAX_CHARS = 400, 1000
LABELS = {"austen": "literature", "kjv": "scripture", "jargon": "glossary", "devil": "satire",
          "gcide": "dictionary", "shakespeare": "drama"}
# (source -> training documents, held-out documents) per night. Night 1: two common and two
# rare sources; nights 2-3: the shift, to sources night 1 never had.
# GCIDE is left out: its entries look like the rare dictionaries', so training on it would
# teach them rather than make the model forget them (measured: their loss fell after the shift).
PLAN: dict[int, dict[str, tuple[int, int]]] = {
    1: {"austen": (640, 60), "kjv": (640, 60), "jargon": (60, 30), "devil": (30, 30)},
    2: {"shakespeare": (800, 50)},
    3: {"shakespeare": (800, 50)},
}
DO_NOT_FORGET = {"austen": 20, "kjv": 20}  # night-1 training documents the user lists
START = datetime(2025, 1, 1, tzinfo=UTC)


def build(out: Path, seed: int = 13) -> dict:
    """Write the corpus under ``out`` and return its manifest."""
    names = sorted({s for night in PLAN.values() for s in night})
    chunks = corpus_inputs.load_chunks(MIN_CHARS, MAX_CHARS, names)
    rng = random.Random(seed)
    pools = {}
    for name, docs in chunks.items():
        # Exact repeats (a verse or entry that occurs twice) are kept once; too-short tails go.
        seen, keep = set(), []
        for d in docs:
            key = " ".join(d.text.split()).lower()
            if len(d.text.encode("utf-8")) >= MIN_CHARS and key not in seen:
                seen.add(key)
                keep.append(d)
        rng.shuffle(keep)
        pools[name] = keep
    out.mkdir(parents=True, exist_ok=True)
    heldout_rows: list[dict] = []
    counters = dict.fromkeys(names, 0)
    manifest: dict = {"seed": seed, "chars": [MIN_CHARS, MAX_CHARS], "nights": {}, "heldout": {}}
    dnf_ids: list[str] = []
    for night, plan in PLAN.items():
        rows = []
        for source, (n_train, n_held) in plan.items():
            take = [pools[source].pop() for _ in range(n_train + n_held)]
            for k, doc in enumerate(take):
                counters[source] += 1
                row = {"id": f"{source}-{counters[source]:06d}", "text": doc.text, "source": source,
                       "label": LABELS[source],
                       "timestamp": START + timedelta(days=30 * (night - 1), seconds=rng.randrange(86_400 * 28))}
                if k < n_train:
                    rows.append(row)
                else:
                    heldout_rows.append({**row, "night": night})
            if night == 1 and source in DO_NOT_FORGET:
                dnf_ids += [r["id"] for r in rows if r["source"] == source][:DO_NOT_FORGET[source]]
        rng.shuffle(rows)
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("label", pa.string()),
            ("timestamp", pa.timestamp("us", tz="UTC"))]))
        folder = out / f"night{night}"
        folder.mkdir(exist_ok=True)
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), folder / "part-00000.parquet", compression="zstd")
        pq.write_table(table.slice(half), folder / "part-00001.parquet", compression="zstd")
        manifest["nights"][night] = {s: n for s, (n, _) in plan.items()}
        manifest["heldout"][night] = {s: h for s, (_, h) in plan.items()}
    held = pa.Table.from_pylist(heldout_rows)
    pq.write_table(held, out / "heldout.parquet", compression="zstd")
    (out / "do_not_forget.txt").write_text("# night-1 training documents a user asks Glia to protect\n"
                                           + "\n".join(sorted(dnf_ids)) + "\n")
    manifest["do_not_forget"] = len(dnf_ids)
    manifest["inputs"] = {name: {"sha256": corpus_inputs.chunks_sha256(docs), "chunks": len(docs)}
                          for name, docs in chunks.items()}
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args(argv)
    m = build(args.out, args.seed)
    print(json.dumps({k: m[k] for k in ("nights", "heldout", "do_not_forget")}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
