"""An eval set and an extra shard for the demo of eval-set decontamination and PII tagging.

    .venv/bin/python examples/decon_pii.py build/demo/extra --eval examples/eval/fortunes.parquet
    .venv/bin/python examples/decon_pii.py build/eval   # (re)build the eval set itself: build/eval/eval/fortunes.parquet

The eval set is real text that ships in a package: English fortunes (Debian ``fortunes``,
unpacked with ``apt-get download`` by ``examples.sources.fetch_deb``), one item per fortune of
at least ``MIN_WORDS`` words, id ``<file>/<n>``. The extra shard (``night4/part-00000.parquet``,
the example corpus's columns) holds Debian copyright texts of this machine with

* an eval item planted verbatim in the middle of one document (``contaminated:fortunes:<id>``),
* one planted lightly edited (case, punctuation and line breaks changed: still contaminated),
* a near miss: an eval item with every 10th word changed (no 13 words in a row left: not),
* more copyright texts unchanged (``extra-clean``, ``extra-clean-<n>``),
* PII planted in real text (an email, a phone number, an IPv4 address, a Luhn-valid card
  number, a mod-97-valid IBAN) and look-alikes that must not be tagged (a version number,
  a date, an ISBN, a card number failing Luhn).

The committed corpus (``examples/commons``) is not changed; ``make demo`` runs this shard as a
fourth night. Tests use the same functions.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.sources import debian_copyright, fetch_deb  # noqa: E402

MIN_WORDS = 25
FORTUNE_FILES = ("wisdom", "science", "education")  # in `fortunes` (`literature` is in `fortunes-min`)

PII_TEXT = ("For questions about this packaging write to jane.roe@example.org or call +44 20 7946 0958; "
            "the mirror at 198.51.100.23 serves the archive. Donations: card 4111 1111 1111 1111, "
            "IBAN GB82 WEST 1234 5698 7654 32.")
LOOKALIKES = ("Upgraded from version 2.4.1.10 on 2023-04-15 (ISBN 978-0-14-143951-8); the reference "
              "4111 1111 1111 1112 is not a card.")


def fortunes(files: tuple[str, ...] = FORTUNE_FILES, min_words: int = MIN_WORDS) -> list[tuple[str, str]]:
    """``(id, text)`` of every fortune of at least ``min_words`` words in the given files."""
    root = fetch_deb("fortunes") / "usr/share/games/fortunes"
    out = []
    for name in files:
        raw = (root / name).read_text(encoding="utf-8", errors="replace")
        for i, item in enumerate(raw.split("\n%\n")):
            item = item.strip().strip("%").strip()
            if len(re.findall(r"\w+", item)) >= min_words:
                out.append((f"{name}/{i}", item))
    return out


def light_edit(text: str) -> str:
    """The same words, differently presented: upper case, punctuation dropped, lines rejoined."""
    return " ".join(re.sub(r"[^\w\s]", " ", text).upper().split())


def near_miss(text: str, every: int = 10) -> str:
    """Every ``every``-th word replaced: no run of 13 original words survives (words as the tagger
    counts them, ``\\w+``: ``6-dimensional`` is two)."""
    words = re.findall(r"\w+", text)
    return " ".join("glia" if i % every == every - 1 else w for i, w in enumerate(words))


def plant(host: str, insert: str) -> str:
    """``insert`` as a paragraph in the middle of ``host`` (at a paragraph break if there is one)."""
    paras = host.split("\n\n")
    mid = max(1, len(paras) // 2)
    return "\n\n".join([*paras[:mid], insert, *paras[mid:]])


def build(out: Path, n_eval: int = 200, eval_path: Path | None = None, n_docs: int = 15) -> tuple[Path, Path]:
    """Write ``<out>/shards/night4/part-00000.parquet`` planted from the eval set ``eval_path``
    (default: ``<out>/eval/fortunes.parquet``, written first from the first ``n_eval`` fortunes),
    ``n_docs`` documents in all (enough that the decide stage's night cap, 20 %, lets both
    contaminated ones go); return both paths. ``make demo`` passes the committed ``examples/eval/fortunes.parquet``."""
    if eval_path is None:
        items = fortunes()[:n_eval]
        eval_path = out / "eval" / "fortunes.parquet"
        eval_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [i for i, _ in items], "text": [t for _, t in items]}), eval_path)
    table = pq.read_table(eval_path)
    items = list(zip(table["id"].to_pylist(), table["text"].to_pylist()))
    hosts = [d.text for d in debian_copyright()[:n_docs]]
    texts = [plant(hosts[0], items[3][1]), plant(hosts[1], light_edit(items[7][1])),
             plant(hosts[2], near_miss(items[11][1])), plant(hosts[3], PII_TEXT), plant(hosts[4], LOOKALIKES),
             *hosts[5:]]
    ids = ["extra-contaminated", "extra-edited", "extra-near-miss", "extra-pii", "extra-lookalikes", "extra-clean",
           *[f"extra-clean-{i}" for i in range(1, len(hosts) - 5)]]
    ts = datetime(2024, 6, 1, tzinfo=timezone.utc)
    shard = out / "shards" / "night4" / "part-00000.parquet"
    shard.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts, "source": ["debian-copyright"] * len(ids),
                             "timestamp": pa.array([ts] * len(ids), pa.timestamp("us", tz="UTC")),
                             "label": ["license"] * len(ids)}), shard)
    return eval_path, shard


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="folder for the shard (and the eval set unless --eval is given)")
    ap.add_argument("--eval", type=Path, help="an existing eval set to plant from (id, text columns)")
    args = ap.parse_args()
    e, s = build(args.out, eval_path=args.eval)
    print(f"eval set {e}\nextra shard {s}")
