"""PII on real text: planted emails, phones, IPs, cards and IBANs in Debian fortunes are found
with their exact spans; look-alikes (versions, dates, ISBNs, failing checksums) are not; the
shards are never changed and redaction happens in the exports and the dataloader only."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import query, run_night
from glia.core.params import ConfigError
from glia.core.pii import find, iban_ok, luhn_ok, redact
from examples.decon_pii import LOOKALIKES, PII_TEXT, build, fortunes
from glia.taggers.pii import PIITagger


def _card(prefix: str, length: int, rng: random.Random) -> str:
    """A card number with a valid Luhn check digit."""
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def _iban(country: str, bban: str) -> str:
    """An IBAN with correct mod-97 check digits."""
    num = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - num % 97:02d}{bban}"


def _positives(rng: random.Random) -> list[tuple[str, str]]:
    cards = [_card("4", 16, rng), _card("51", 16, rng), _card("37", 15, rng), _card("6011", 16, rng)]
    ibans = [_iban("DE", "370400440532013000"), _iban("FR", "20041010050500013M02606"), _iban("NL", "ABNA0417164300")]
    return [
        ("email", "ada.lovelace@analytical-engine.org"), ("email", "b_smith+news@mail.example.co.uk"),
        ("phone", "+1 415 555 2671"), ("phone", "(020) 7946-0958"), ("phone", "+49 30 901820"),
        ("phone", "555-867-5309"), ("ipv4", "203.0.113.45"), ("ipv4", "10.0.0.1"),
        ("ipv6", "2001:db8:85a3::8a2e:370:7334"), ("ipv6", "fe80::1ff:fe23:4567:890a"),
        ("credit_card", cards[0]), ("credit_card", " ".join(cards[1][i:i + 4] for i in range(0, 16, 4))),
        ("credit_card", cards[2]), ("credit_card", "-".join(cards[3][i:i + 4] for i in range(0, 16, 4))),
        ("iban", ibans[0]), ("iban", " ".join(ibans[1][i:i + 4] for i in range(0, len(ibans[1]), 4))),
        ("iban", ibans[2]),
    ]


NEGATIVES = [
    "version 1.2.3.4", "v10.0.0.1", "Python 3.11.7", "release 2.13.0", "on 2023-04-15", "on 15.04.2023",
    "at 12:30:45", "ISBN 978-0-14-143951-8", "ISBN 0-306-40615-2", "ISBN-13: 978-3-16-148410-0",
    "4111 1111 1111 1112", "GB82 WEST 1234 5698 7654 33", "in 1999-2001", "pi is 3.14159265358979",
    "300.1.2.3", "page 123", "f(x) = 12", "bob at example dot com", "a::b", "order 1234567",
]


def test_planted_pii_is_found_with_its_spans_and_lookalikes_are_not() -> None:
    rng = random.Random(3)
    hosts = [t for _, t in fortunes()]
    assert all(iban_ok(v) for k, v in _positives(rng) if k == "iban")
    docs, want = [], []
    for i, (kind, value) in enumerate(_positives(random.Random(3)) * 3):
        host = hosts[i]
        cut = host.find(" ", len(host) // 2)
        text = f"{host[:cut]} ({value}) {host[cut + 1:]}"
        docs.append(text)
        want.append([(kind, cut + 2, cut + 2 + len(value))])
    for i, neg in enumerate(NEGATIVES):
        host = hosts[100 + i]
        docs.append(f"{host} {neg}.")
        want.append([])
    tags = PIITagger().tag(pa.table({"doc_id": [str(i) for i in range(len(docs))], "text": docs})).to_pylist()
    got = [[(s["kind"], s["start"], s["end"]) for s in t["pii_spans"]] for t in tags]
    assert got == want
    for t, w in zip(tags, want):
        assert t["pii_count"] == len(w) and sum(t[f"pii_{k}"] for k in ("email", "phone", "ipv4", "ipv6",
                                                                            "credit_card", "iban")) == len(w)


def test_real_text_without_pii_stays_clean() -> None:
    texts = [t for _, t in fortunes(min_words=1)]
    tags = PIITagger().tag(pa.table({"doc_id": [str(i) for i in range(len(texts))], "text": texts}))
    found = [(texts[i], s) for i, spans in enumerate(tags["pii_spans"].to_pylist()) for s in spans]
    # Fortunes are quotations: any hit must be a real address or number, shown here if not.
    assert [(s["kind"], t[s["start"]:s["end"]]) for t, s in found] == []


def test_redact_replaces_spans_with_the_placeholder() -> None:
    spans = find(PII_TEXT)
    assert {k for k, _, _ in spans} == {"email", "phone", "ipv4", "credit_card", "iban"}
    out = redact(PII_TEXT, spans, "[{kind}]")
    assert "jane.roe@example.org" not in out and "[email]" in out and "[iban]" in out
    assert redact(PII_TEXT, spans, "XXX").count("XXX") == len(spans)
    assert find(LOOKALIKES) == []


def test_bad_kind_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown kind"):
        PIITagger(kinds=["email", "ssn"])
    only = PIITagger(kinds=["email"]).tag(pa.table({"doc_id": ["a"], "text": [PII_TEXT]})).to_pylist()[0]
    assert only["pii_count"] == only["pii_email"] == 1


def test_exports_and_the_dataloader_redact_and_the_shards_stay_untouched(tmp_path: Path) -> None:
    from glia.cli.main import EXIT_OK, main
    from glia.curation.dataloader import ReplayPlan, iter_replay

    _, shard = build(tmp_path / "extra")
    before = hashlib.sha256(shard.read_bytes()).hexdigest()
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "pii"]\nstages = ["dedup", "decide"]\n')
    db = tmp_path / "glia.duckdb"
    assert run_night(shard.parent, db, rules).status == "completed"
    counts = dict(query(db, "SELECT doc_id, pii_count FROM v_documents"))
    assert counts["extra-pii"] >= 5 and counts["extra-lookalikes"] == len(find(pq.read_table(shard)["text"][4].as_py()))
    out = tmp_path / "manifest.parquet"
    assert main(["manifest", "export", "--out", str(out), "--db", str(db), "--redact-pii", "<{kind}>"]) == EXIT_OK
    m = pq.read_table(out)
    text = dict(zip(m["doc_id"].to_pylist(), m["text"].to_pylist()))
    assert "jane.roe@example.org" not in text["extra-pii"] and "<email>" in text["extra-pii"]
    assert "<iban>" in text["extra-pii"] and "<credit_card>" in text["extra-pii"]
    assert "978-0-14-143951-8" in text["extra-lookalikes"] and "2023-04-15" in text["extra-lookalikes"]
    assert all(find(t) == [] for t in text.values())  # nothing left to find
    plain = tmp_path / "plain.parquet"
    assert main(["manifest", "export", "--out", str(plain), "--db", str(db)]) == EXIT_OK
    assert "text" not in pq.read_table(plain).column_names  # without the flag: as before
    rows = query(db, 'SELECT doc_id, shard_path, "row" FROM v_manifest')
    draws = pa.table({"doc_id": [r[0] for r in rows], "weight": [1.0] * len(rows), "count": [1] * len(rows),
                      "shard_path": [r[1] for r in rows], "row": [r[2] for r in rows]})
    plan = ReplayPlan.from_rows(draws, 0)
    redacted = {d["doc_id"]: d["text"] for d in iter_replay(plan, redact_pii="#")}
    raw = {d["doc_id"]: d["text"] for d in iter_replay(plan)}
    assert "jane.roe@example.org" in raw["extra-pii"] and "jane.roe@example.org" not in redacted["extra-pii"]
    assert redacted["extra-clean"].count("#") > raw["extra-clean"].count("#")  # its real emails too
    replay = tmp_path / "replay.parquet"
    assert main(["replay", "build", "--db", str(db), "--size", "200", "--seed", "1"]) == EXIT_OK
    assert main(["replay", "export", "--db", str(db), "--out", str(replay), "--redact-pii", "[{kind}]"]) == EXIT_OK
    r = pq.read_table(replay)
    assert r.num_rows > 0 and all(find(t) == [] for t in r["text"].to_pylist())
    assert any("[email]" in t for t in r["text"].to_pylist())
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == before
