"""Build ``models/data/risk_prose.parquet``: the clean paragraphs the n-gram risk head is trained on
as negatives (every document of night 1 of the example corpus: ``id``, ``text``, ``source``).

They ship inside the package (package data of the wheel), so an installed Glia trains its own
head without a checkout; the held-out evaluation reads nights 2 and 3 of ``examples/commons``.

    python examples/build_risk_prose.py
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
NIGHT = ROOT / "examples" / "commons" / "night1"
OUT = ROOT / "models" / "data" / "risk_prose.parquet"


def build(out: Path = OUT) -> pa.Table:
    parts = [pq.read_table(f, columns=["id", "text", "source"]) for f in sorted(NIGHT.glob("*.parquet"))]
    table = pa.concat_tables(parts).combine_chunks()
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, compression="zstd")
    return table


if __name__ == "__main__":
    t = build()
    print(f"wrote {t.num_rows} paragraphs to {OUT.relative_to(ROOT)}")
