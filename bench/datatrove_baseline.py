"""Peer baseline: datatrove 0.10.1's FineWeb MinHash near-duplicate removal, end to end.

`run_datatrove_minhash` runs datatrove's own four MinHash stages (signatures -> buckets ->
cluster -> filter) with its FineWeb settings (word 5-grams, 14 buckets x 8 hashes, 64-bit
xxhash) on Glia-style Parquet shards through `LocalPipelineExecutor`, and returns what it
removed, so that Glia's dedup can be compared with it on speed and on decisions.

Choices that make this the *fastest fair* datatrove run, not a strawman:

* Tokenizer. The signature step tokenises with `load_word_tokenizer(language)`
  (datatrove/utils/word_tokenizers.py). For "eng" that is `SpaCyTokenizer` (from
  assets/tokenizer_assignment.csv), which needs spaCy and is ~14x slower; even the
  `WhitespaceTokenizer` fallback calls spaCy's "xx" model, and `NLTKTokenizer` needs the
  punkt data (a download). 0.10.1 ships no regex tokenizer, but `load_word_tokenizer`
  returns a `WordTokenizer` *instance* unchanged ("for custom tokenizers"), and
  `MinhashDedupSignature(language=...)` passes its argument straight to it. So we pass a
  `RegexWordTokenizer`. It runs on `simplify_text` output (lower-cased, punctuation turned
  into spaces, whitespace collapsed), where a word regex gives the same words as spaCy's
  whitespace-and-affix rules in practically all cases.
* xxhash. datatrove 0.10.1 hands `str` to `xxhash.xxh64_intdigest`; xxhash >= 4 refuses
  `str` ("Strings must be encoded before hashing", datatrove#508: its `processing` extra
  pins `xxhash<4`, this environment has 4.x). We give the signature step a hash function
  that UTF-8-encodes first: exactly what xxhash 3.x did internally, so the digests are the
  same as datatrove's on xxhash 3.x (the fix proposed upstream in datatrove#519).
* Writer. datatrove's `ParquetWriter` infers its schema from the first document, so a
  metadata column that is null there (e.g. an all-null `label`) breaks the later batches.
  We give it the explicit schema of the input shards instead, and write kept and removed
  documents (`exclusion_writer`) as Parquet with the input's columns.

Everything (signatures, buckets, clusters, outputs, datatrove's logs) stays under
`work_dir`; shards must be local files, so no stage can reach the network. The only things
written elsewhere are multiprocess's transient IPC sockets and semaphores ($TMPDIR/pymp-*,
/dev/shm), removed when the run ends.

datatrove's executor starts workers with "forkserver", which re-imports the main module:
a script that calls `run_datatrove_minhash` needs the `if __name__ == "__main__":` guard
(without it the pool keeps respawning failing workers and the run hangs).

Measured on 2 cores, 20k documents of ~1.5k chars in 4 shards, 2 workers, no other load:
8.4-9.3 s end to end (~2,200-2,350 docs/s); signatures ~5.7 s, buckets ~1.2 s, cluster
~0.1 s, filter ~1.6 s. With the shared machine busy, the same run took up to 23 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import datatrove.executor.base as _dt_executor_base
import datatrove.pipeline.dedup.minhash as _dt_minhash
import datatrove.utils.logging as _dt_logging
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from datatrove.executor import LocalPipelineExecutor
from datatrove.io import DataFolder
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer
from loguru import logger

__all__ = ["DatatroveResult", "RegexWordTokenizer", "FINEWEB_MINHASH_CONFIG", "run_datatrove_minhash"]

# FineWeb's MinHash settings (datatrove's defaults, spelled out so a datatrove upgrade that
# changes a default cannot silently change the baseline).
FINEWEB_MINHASH_CONFIG = MinhashConfig(
    n_grams=5,
    num_buckets=14,
    hashes_per_bucket=8,
    hash_config=HashConfig(precision=64, hash_fc="xxhash"),
)

STAGES = ("signatures", "buckets", "cluster", "filter")

# Subfolders of work_dir that one run owns; they are cleared first so that a rerun into the
# same work_dir never mixes old signatures or .remove files into the new result.
_OWNED_SUBDIRS = ("signatures", "buckets", "remove_ids", "output", "removed", "logs")


@dataclass
class DatatroveResult:
    """What datatrove's MinHash pipeline did to a set of shards.

    Attributes:
        n_docs: documents datatrove read (it skips rows whose text is null or empty).
        seconds: wall time of the four stages, reading and writing included.
        removed_ids: ids of the documents the filter stage dropped as near-duplicates.
        clusters: each removed id -> id of the document kept for its cluster.
        stage_seconds: wall time of each stage, keys as in `STAGES`.
    """

    n_docs: int
    seconds: float
    removed_ids: set[str]
    clusters: dict[str, str]
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def docs_per_second(self) -> float:
        return self.n_docs / self.seconds if self.seconds > 0 else float("inf")


class RegexWordTokenizer(WordTokenizer):
    r"""Word tokenizer for MinHash shingling: maximal runs of `\w` characters.

    datatrove only calls `word_tokenize` during MinHash. The sentence methods exist only
    because `WordTokenizer` declares them abstract; they treat the text as one sentence.
    """

    _WORD = re.compile(r"\w+")

    def __init__(self) -> None:
        super().__init__(language=None)

    def word_tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text] if text.strip() else []

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))] if text.strip() else []

    def __repr__(self) -> str:  # shows up in datatrove's executor.json
        return f"{type(self).__name__}({self._WORD.pattern!r})"


def _xxhash64_utf8(data: str | bytes) -> int:
    """datatrove's `xxhash64`, made to work on xxhash >= 4 with the same digests as 3.x."""
    return xxhash.xxh64_intdigest(data.encode("utf-8") if isinstance(data, str) else data)


# --------------------------------------------------------------------------------------------
# Quiet logging. datatrove logs every task at INFO to stderr and resets loguru's handlers on
# each task (`add_task_logger` calls `logger.remove()`, `close_task_logger` re-adds a DEBUG
# stderr sink), so setting a level once in the caller does not last. We swap those two
# functions - in this process and, through `_QuietExecutor`, in each pool worker - for ones
# that keep the per-task log file (in work_dir) but send only warnings and errors to stderr,
# and drop the cluster stage's progress bar.
# --------------------------------------------------------------------------------------------

_LOG_FORMAT = "{time:HH:mm:ss} | {level: <8} | {name}:{function}:{line} - {message}"
_ORIGINALS: dict[str, Any] = {
    "add_task_logger": _dt_executor_base.add_task_logger,
    "setup_default_logger": _dt_logging.setup_default_logger,
    "tqdm": _dt_minhash.tqdm,
}


def _warnings_to_stderr() -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format=_LOG_FORMAT)


def _quiet_add_task_logger(logging_dir: DataFolder, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    _warnings_to_stderr()
    logger.add(logfile, level="INFO", format=_LOG_FORMAT)
    return logfile


_T = TypeVar("_T")


def _no_progress_bar(iterable: Iterable[_T], *_args: Any, **_kwargs: Any) -> Iterable[_T]:
    # the cluster stage wraps its .dups files in an unconditional tqdm bar
    return iterable


def _silence_datatrove() -> None:
    """Install the quiet logging hooks in the current process (idempotent)."""
    _dt_executor_base.add_task_logger = _quiet_add_task_logger
    _dt_logging.setup_default_logger = _warnings_to_stderr
    _dt_minhash.tqdm = _no_progress_bar
    _warnings_to_stderr()


@contextlib.contextmanager
def _quiet_datatrove() -> Iterator[None]:
    """Silence datatrove in this process for the duration, then give back its own setup."""
    _silence_datatrove()
    try:
        yield
    finally:
        _dt_executor_base.add_task_logger = _ORIGINALS["add_task_logger"]
        _dt_logging.setup_default_logger = _ORIGINALS["setup_default_logger"]
        _dt_minhash.tqdm = _ORIGINALS["tqdm"]
        _ORIGINALS["setup_default_logger"]()


class _QuietExecutor(LocalPipelineExecutor):
    """LocalPipelineExecutor whose tasks log warnings only, also in its pool workers: those
    come from datatrove's forkserver and do not inherit this process's patches."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
        _silence_datatrove()
        return super()._run_for_rank(rank, local_rank, node_rank)


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


def _local_shards(shard_paths: list[str]) -> list[Path]:
    """Absolute local paths; anything fsspec would open remotely (s3://, hf://...) is refused."""
    if not shard_paths:
        raise ValueError("no shards given")
    shards = []
    for p in shard_paths:
        if "://" in str(p):
            raise ValueError(f"only local shards are allowed (no network): {p}")
        path = Path(p).resolve()
        if not path.is_file():
            raise FileNotFoundError(path)
        shards.append(path)
    if len(set(shards)) != len(shards):
        raise ValueError("a shard is listed twice")
    return shards


def _output_schema(shards: list[Path]) -> pa.Schema:
    """Schema of what ParquetWriter(expand_metadata=True) receives: the input columns plus the
    `file_path` the reader adds. Null-typed columns (all-null in a shard) are promoted to the
    type other shards give them, or to string."""
    schema = pa.unify_schemas([pq.read_schema(p) for p in shards], promote_options="permissive")
    fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema]
    if "file_path" not in schema.names:
        fields.append(pa.field("file_path", pa.string()))
    return pa.schema(fields)


def _read_uint32(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<u4")


def _doc_ids(shard: Path, text_key: str, id_key: str) -> list[str]:
    """Ids in the order datatrove numbers documents: its reader skips null/empty text, and the
    signature and filter stages count only the documents it yields."""
    table = pq.read_table(shard, columns=[id_key, text_key])
    has_text = pc.fill_null(pc.greater(pc.utf8_length(table[text_key]), 0), False)
    return [str(i) for i in table[id_key].filter(has_text).to_pylist()]


def _collect(shards: list[Path], remove_dir: Path, text_key: str, id_key: str) -> tuple[int, set[str], dict[str, str]]:
    """Turn datatrove's per-shard doc indices (.remove, .clusters) back into ids."""
    ids = [_doc_ids(s, text_key, id_key) for s in shards]
    removed_idx: set[tuple[int, int]] = set()
    members: dict[int, list[tuple[int, int]]] = {}
    for rank in range(len(shards)):
        remove_file = remove_dir / f"{rank:06d}.remove"
        if remove_file.exists():
            removed_idx.update((rank, int(d)) for d in _read_uint32(remove_file))
        cluster_file = remove_dir / f"{rank:06d}.clusters"
        if cluster_file.exists():  # (doc index, cluster id) pairs, for every clustered doc
            for doc, cluster in _read_uint32(cluster_file).reshape(-1, 2):
                members.setdefault(int(cluster), []).append((rank, int(doc)))

    # Union-find leaves exactly one member of each cluster un-removed: its root, which the
    # filter keeps.
    clusters: dict[str, str] = {}
    for docs in members.values():
        kept = [d for d in docs if d not in removed_idx]
        if len(kept) != 1:
            raise RuntimeError(f"cluster without a single kept document: {docs}")
        kept_id = ids[kept[0][0]][kept[0][1]]
        for rank, doc in docs:
            if (rank, doc) in removed_idx:
                clusters[ids[rank][doc]] = kept_id
    removed_ids = {ids[rank][doc] for rank, doc in removed_idx}
    return sum(map(len, ids)), removed_ids, clusters


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def run_datatrove_minhash(
    shard_paths: list[str],
    work_dir: str,
    workers: int = 2,
    *,
    text_key: str = "text",
    id_key: str = "id",
) -> DatatroveResult:
    """Run datatrove 0.10.1's four-stage FineWeb MinHash dedup on local Parquet shards.

    Stage 1 (signatures) and stage 4 (filter) run one task per shard, stage 2 (buckets) one
    task per bucket (datatrove needs a multiple of `num_buckets`), stage 3 (cluster) a single
    task (datatrove requires it); `workers` tasks run at a time. Kept documents go to
    `work_dir/output`, removed ones to `work_dir/removed`, both Parquet.

    Args:
        shard_paths: local Parquet files with `id_key`, `text_key` and metadata columns.
        work_dir: everything the run writes goes here (created if missing).
        workers: concurrent tasks per stage.
        text_key, id_key: the text and id columns.

    Returns:
        A `DatatroveResult`; `seconds` covers the four stages, not the id mapping after them.
    """
    shards = _local_shards(shard_paths)
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for sub in _OWNED_SUBDIRS:
        shutil.rmtree(work / sub, ignore_errors=True)

    # A paths file pins shard i to task i in stages 1 and 4 (datatrove gives task r the lines
    # r, r + world_size, ...), which is what lets doc indices be mapped back to ids.
    data_root = Path(os.path.commonpath([s.parent for s in shards]))
    paths_file = work / "shards.txt"
    paths_file.write_text("".join(f"{s.relative_to(data_root)}\n" for s in shards))

    def reader() -> ParquetReader:
        return ParquetReader(str(data_root), paths_file=str(paths_file), text_key=text_key, id_key=id_key)

    config = FINEWEB_MINHASH_CONFIG
    signature_step = MinhashDedupSignature(
        output_folder=str(work / "signatures"), config=config, language=RegexWordTokenizer()
    )
    signature_step._hash_func = _xxhash64_utf8  # see the module docstring: xxhash >= 4
    schema = _output_schema(shards)

    def writer(folder: str) -> ParquetWriter:
        return ParquetWriter(str(work / folder), schema=schema, expand_metadata=True)

    n_shards = len(shards)
    stages: dict[str, tuple[list[Any], int, int]] = {  # name -> (pipeline, tasks, workers)
        "signatures": ([reader(), signature_step], n_shards, workers),
        "buckets": (
            [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)],
            config.num_buckets,
            workers,
        ),
        "cluster": (
            [MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=config, save_cluster_id=True)],
            1,
            1,
        ),
        "filter": (
            [
                reader(),
                MinhashDedupFilter(str(work / "remove_ids"), exclusion_writer=writer("removed")),
                writer("output"),
            ],
            n_shards,
            workers,
        ),
    }

    stage_seconds: dict[str, float] = {}
    with _quiet_datatrove():
        start = time.perf_counter()
        for name, (pipeline, tasks, stage_workers) in stages.items():
            t0 = time.perf_counter()
            _QuietExecutor(
                pipeline,
                tasks=tasks,
                workers=min(stage_workers, tasks),
                logging_dir=str(work / "logs" / name),
                skip_completed=False,  # we cleared the outputs; never trust old completions
            ).run()
            stage_seconds[name] = time.perf_counter() - t0
        seconds = time.perf_counter() - start

    n_docs, removed_ids, clusters = _collect(shards, work / "remove_ids", text_key, id_key)
    return DatatroveResult(n_docs, seconds, removed_ids, clusters, stage_seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shard_dir", help="folder of Parquet shards (*.parquet, sorted by name)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", help="keep datatrove's files here (default: a temporary folder)")
    args = parser.parse_args(argv)

    shards = sorted(str(p) for p in Path(args.shard_dir).glob("*.parquet"))
    if not shards:
        parser.error(f"no *.parquet files in {args.shard_dir}")
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="datatrove-minhash-"))
        result = run_datatrove_minhash(shards, work_dir, workers=args.workers)
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.stage_seconds.items())
    print(
        f"datatrove {len(shards)} shards, {result.n_docs} docs, {args.workers} workers: "
        f"{result.seconds:.2f}s = {result.docs_per_second:,.0f} docs/s ({stages}); "
        f"removed {len(result.removed_ids)} in {len(set(result.clusters.values()))} clusters"
    )


if __name__ == "__main__":
    main()
