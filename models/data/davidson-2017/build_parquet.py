"""Rebuild ``labeled_data.parquet`` from the original ``labeled_data.csv`` (Davidson et al. 2017).

    python models/data/davidson-2017/build_parquet.py PATH/TO/labeled_data.csv

Keeps every tweet and every label column, and adds a fixed ``split``: a stratified 80/20
train/test split by ``class`` drawn with a seeded numpy generator, stored in the file so the
held-out tweets are the same on every machine and every library version. ``test`` tweets are
never used to train Glia's default risk head (``models.risk_head``); the benchmark and the
tests judge it on them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SEED = 2017
TEST_SHARE = 0.2
OUT = Path(__file__).resolve().parent / "labeled_data.parquet"


def stratified_split(labels: np.ndarray, seed: int = SEED, test_share: float = TEST_SHARE) -> np.ndarray:
    """``"train"``/``"test"`` per row: in every class, a seeded random ``test_share`` of rows is test."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        n_test = int(round(len(rows) * test_share))
        split[rng.permutation(rows)[:n_test]] = "test"
    return split


def build(csv_path: Path, out: Path = OUT) -> pa.Table:
    raw = pacsv.read_csv(csv_path)
    cls = raw["class"].to_numpy()
    table = pa.table({
        "row": raw[""].cast(pa.int32()),  # the CSV's unnamed index column, to trace a tweet back
        "tweet": raw["tweet"].cast(pa.string()),
        "class": raw["class"].cast(pa.int8()),  # 0 hate speech, 1 offensive language, 2 neither
        "count": raw["count"].cast(pa.int8()),  # annotators, and their votes per class
        "hate_speech": raw["hate_speech"].cast(pa.int8()),
        "offensive_language": raw["offensive_language"].cast(pa.int8()),
        "neither": raw["neither"].cast(pa.int8()),
        "split": pa.array(stratified_split(cls), pa.string()).dictionary_encode(),
    })
    pq.write_table(table, out, compression="zstd", compression_level=19)
    return table


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    t = build(Path(sys.argv[1]))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {t.num_rows} tweets)")
