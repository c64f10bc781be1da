"""The pruning benchmark's --quick mode, end to end: the committed small corpus, real Glia nights, real training.

It runs ``bench/pruning.py --quick`` as ``make bench-pruning`` runs the full one (a subprocess,
one torch thread per process) and checks what the result promises: every arm, each trained on
exactly the same number of tokens (counted from the loss masks), ``glia`` read from
``v_manifest`` and equal to the replayed default rule, ``random`` as large as ``glia`` in every
night, the metrics per stratum over the seeds, the tag table and the plot.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "pruning_quick"
sys.path.insert(0, str(REPO / "bench"))

from conftest import run_quick_bench  # noqa: E402
from tinylm import pack_windows  # noqa: E402

JUNK = ("boilerplate", "spam", "repetitive", "encoding", "gibberish", "toxic", "contaminated", "non_english")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    tmp = tmp_path_factory.mktemp("pruning")
    out = tmp / "result.json"
    result, stdout = run_quick_bench("pruning.py", out, "--nights-cache", str(tmp / "nights"), timeout=300)
    return result, stdout, out.with_suffix(".png")


def test_quick_corpus_has_every_kind_of_junk_and_unseen_heldout_text() -> None:
    truth = pq.read_table(CORPUS / "truth.parquet")
    kinds = set(truth["kind"].to_pylist())
    assert {"clean", "exact_copy", "near_copy", *JUNK} <= kinds
    train = pa.concat_tables([pq.read_table(CORPUS / f"night{n}") for n in (1, 2, 3)])
    assert sorted(train["id"].to_pylist()) == sorted(truth["id"].to_pylist())
    held = pq.read_table(CORPUS / "heldout.parquet")
    assert set(held["source"].to_pylist()) == {"austen", "kjv", "shakespeare", "jargon", "devil"}
    assert not set(held["text"].to_pylist()) & set(train["text"].to_pylist()), "held-out text must never be trained on"
    # Every planted eval item is quoted verbatim by a contaminated page; the others by none.
    ev = pq.read_table(CORPUS / "eval.parquet")
    text = dict(zip(train["id"].to_pylist(), train["text"].to_pylist()))
    pages = [text[i] for i, k in zip(truth["id"].to_pylist(), truth["kind"].to_pylist()) if k == "contaminated"]
    for item, planted in zip(ev["text"].to_pylist(), ev["planted"].to_pylist()):
        assert any(item in p for p in pages) == planted
    # Boilerplate pages repeat with a long tail: one page far more often than another.
    pages_of = [o for o, k in zip(truth["origin"].to_pylist(), truth["kind"].to_pylist()) if k == "boilerplate"]
    counts = sorted(pages_of.count(p) for p in set(pages_of))
    assert len(counts) == 4 and counts[-1] >= 3 * counts[0]
    dnf = [ln for ln in (CORPUS / "do_not_forget.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert dnf and set(dnf) <= set(text)


def test_pack_windows_gives_exact_tokens_and_shares_windows_between_close_sets() -> None:
    rng = np.random.default_rng(0)
    texts = ["".join(chr(97 + int(c)) for c in rng.integers(0, 26, int(n))) for n in rng.integers(5, 300, 60)]
    ids = [f"d{i:03d}" for i in range(60)]
    batch, owner = pack_windows(texts, ids, 800, 16, seed=3)  # more than one epoch of ~480 windows
    assert batch.shape == (800, 18) and (batch[:, -1] == 17).all() and owner.shape == (800,)
    for w, o in zip(batch, owner):  # every window is a full slice of the text it is said to come from
        assert "".join(map(chr, w[:17])) in texts[o]
    # Common random numbers: dropping three documents leaves every other window where it was in
    # the order, so the smaller set trains on each window the full set trained on, but the dropped.
    keep = [i for i in range(60) if i not in (5, 17, 40)]
    small, small_owner = pack_windows([texts[i] for i in keep], [ids[i] for i in keep], 200, 16, seed=3)
    full, full_owner = pack_windows(texts, ids, 200, 16, seed=3)
    shared = [bytes(w[:17].astype(np.uint8)) for w, o in zip(full, full_owner) if o not in (5, 17, 40)]
    in_small = [bytes(w[:17].astype(np.uint8)) for w in small]
    assert len(shared) > 150 and in_small[:len(shared)] == shared
    other, _ = pack_windows(texts, ids, 200, 16, seed=4)
    assert not np.array_equal(other, full)


def test_quick_result_has_every_arm_and_metric(quick: tuple[dict, str, Path]) -> None:
    result, stdout, png = quick
    from glia.curation.rules import DEFAULT_KEEP, DEFAULT_PRUNE, DEFAULT_TERMS

    arms = set(result["arms"])
    want = {"all", "glia", "random", "no_protect", *(f"only:{t}" for t in DEFAULT_TERMS),
            *(f"minus:{t}" for t in (*DEFAULT_KEEP, *DEFAULT_PRUNE)),
            *(f"{k}@{p}" for k in ("rule", "random") for p in ("0.1", "0.2", "0.4"))}
    assert want <= arms, sorted(want - arms)
    table = result["summary"]["table"]
    seeds = result["config"]["seeds"]
    for arm in arms:
        for key in ("clean", "rare", "austen", "kjv", "shakespeare", "jargon", "devil", "do_not_forget",
                    "junk_share", "toxic_share", "contaminated_share"):
            cell = table[arm][key]
            assert len(cell["seeds"]) == seeds and abs(cell["mean"] - np.mean(cell["seeds"])) < 1e-9
        assert 0.0 <= result["composition"][arm]["cluster_coverage"] <= 1.0
        assert f"\n{arm} " in stdout
    assert {"glia - random", "rule@0.2 - random@0.2"} <= set(result["summary"]["paired"])
    assert table["all"]["junk_share"]["mean"] > 0  # the unpruned mixture holds junk
    assert result["composition"]["all"]["pruned_share"] == 0.0
    # Every built-in term has a row in the tag table, with a share per source and per kind.
    rows = result["tag_table"]["rows"]
    for term in DEFAULT_TERMS:
        assert any(label.startswith(f"{term} (") for label in rows), term
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_arm_trained_on_the_same_number_of_tokens(quick: tuple[dict, str, Path]) -> None:
    result, _, _ = quick
    cfg = result["config"]
    want = cfg["steps"] * cfg["batch"] * cfg["ctx"]
    for seed in result["seeds"]:
        tokens = {arm: run["tokens"] for arm, run in seed["runs"].items()}
        assert set(tokens.values()) == {want}, tokens


def test_glia_is_v_manifest_and_random_matches_its_size_in_every_night(quick: tuple[dict, str, Path]) -> None:
    result, _, _ = quick
    check = result["check"]
    assert check["whatif_matches_manifest"] and check["manifest_is_real_keeps"]
    comp = result["composition"]
    assert comp["glia"]["kept"] == check["manifest_docs"] and 0 < comp["glia"]["pruned_share"] < 1
    assert comp["random"]["kept_per_night"] == comp["glia"]["kept_per_night"]
    for p in ("0.1", "0.2", "0.4"):
        assert comp[f"random@{p}"]["kept_per_night"] == comp[f"rule@{p}"]["kept_per_night"]
    # The rare sources are protected: the default keeps every clean Jargon File and Devil's Dictionary document.
    assert comp["glia"]["kept_share_by_kind"]["clean:jargon"] == 1.0
    assert comp["glia"]["kept_share_by_kind"]["clean:devil"] == 1.0
