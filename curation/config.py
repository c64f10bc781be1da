"""Run configuration: the rules file (TOML), with defaults that need no file at all.

Example ``glia.toml``::

    [columns]            # names of the columns in your shards
    id = "doc_id"
    text = "content"
    source = "source"    # optional columns: missing ones are simply absent
    timestamp = "ts"
    label = "class"
    extra = ["lang"]     # more metadata to carry into the documents view

    [run]
    taggers = ["exact", "minhash"]
    batch_size = 10000
    storage_options = {endpoint_url = "http://minio:9000"}  # fsspec arguments for URL shards

    [near_dup]
    ngram = 3            # word n-grams (shingles)
    bands = 32           # LSH bands x rows = MinHash permutations
    rows = 4
    threshold = 0.5      # estimated Jaccard a candidate pair must reach
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The rules file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Columns:
    """Shard column names. ``id`` and ``text`` are required in every shard."""

    id: str = "id"
    text: str = "text"
    source: str = "source"
    timestamp: str = "timestamp"
    label: str = "label"
    extra: tuple[str, ...] = ()

    def optional(self) -> dict[str, str]:
        """Canonical name -> shard column for the optional metadata columns."""
        out = {"source": self.source, "timestamp": self.timestamp, "label": self.label}
        out.update({c: c for c in self.extra})
        return out


@dataclass(frozen=True)
class NearDup:
    """MinHash LSH parameters.

    A pair with true Jaccard ``s`` becomes a candidate with probability
    ``1 - (1 - s**rows)**bands`` (:meth:`candidate_probability`); the S-curve's midpoint is
    near ``(1/bands)**(1/rows)`` (0.42 for 32 x 4). Candidates are then kept only if their
    *estimated* Jaccard (share of equal signature values) reaches ``threshold``. With the
    default word 3-grams and 32 x 4 a pair at word-3-gram Jaccard 0.5 becomes a candidate
    with probability 0.873, at 0.6 with 0.988, at 0.7 with 0.9998, at 0.4 with 0.564 and at
    0.3 with 0.229 (those are then dropped by the 0.5 threshold).

    Measured (``bench/quality_near_dup.py``, edited copies of FOLDOC entries that no default
    was tuned on, see README "Near-duplicate quality"): this default and the previous one
    (word 5-grams, 16 x 7, 0.75, :data:`curation.reindex.LEGACY_NEAR_DUP`) are compared
    there, with every other setting tried. Changing ``ngram``, ``bands``, ``rows`` or
    ``seed`` changes the stored history's signatures: ``glia reindex`` rebuilds it.
    """

    bands: int = 32
    rows: int = 4
    ngram: int = 3
    seed: int = 1
    threshold: float = 0.5
    # Buckets larger than this link each member to the bucket's first document only
    # (star) instead of to every other member, so a boilerplate bucket stays linear.
    max_bucket: int = 64
    # At most this many history candidates per document (those sharing the most bands).
    max_history_candidates: int = 32

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def candidate_probability(self, s: float) -> float:
        """Probability that a pair at true Jaccard ``s`` shares at least one LSH band."""
        return 1.0 - (1.0 - s**self.rows) ** self.bands


@dataclass(frozen=True)
class RunOptions:
    taggers: tuple[str, ...] = ("exact", "minhash")
    # Night stages, each run only when the taggers it needs run (see curation.stages).
    stages: tuple[str, ...] = ("dedup",)
    batch_size: int = 10_000
    glob: str = "**/*.parquet"
    # A document whose text is longer than this many UTF-8 bytes is skipped (recorded in
    # `skipped`): the per-document taggers' time and memory grow with it (datatrove's quality
    # filters take seconds per MB). 0 turns the limit off.
    max_doc_bytes: int = 8 * 1024 * 1024
    # Whether `glia run` goes through the Prefect flow (flows.runners.uses_prefect): "plain"
    # runs the night as plain Python (no Prefect import, no embedded server: seconds less per
    # run), "prefect" always through the flow, "auto" through it only for a Dask task runner or
    # when PREFECT_API_URL names a server. Never changes results (not hashed).
    orchestrator: str = "auto"
    # Where the per-shard tasks run (flows.runners). Never changes results, so it is kept out
    # of the config hash. "threads": `workers` threads in this process; "dask": a `distributed`
    # cluster, the scheduler at `dask_address` or, when that is empty, a LocalCluster of
    # `workers` processes. With `dask_gpu_resource` set (e.g. "GPU"), taggers that want a GPU
    # run only on Dask workers started with that resource (`dask worker --resources GPU=1`).
    task_runner: str = "threads"
    workers: int = 2
    dask_address: str = ""
    dask_gpu_resource: str = ""
    # Extra fsspec arguments for shards behind a URL (s3fs: endpoint_url, anon, profile,
    # client_kwargs, ...), used wherever a shard is opened: discovery, fingerprints, ingest,
    # taggers, the replay dataloader. Never credentials: the run's config is recorded in the
    # catalog, so those come from the environment or the provider's own files (see
    # `check_storage_options`). Not hashed: where the bytes come from is not what they say.
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)


# RunOptions keys that choose where work runs, not what it computes (left out of the hash).
EXECUTION_KEYS = ("orchestrator", "task_runner", "workers", "dask_address", "dask_gpu_resource", "storage_options")

# Names (or parts of names) of fsspec arguments that carry secrets: s3fs key/secret/token,
# botocore's aws_*, gcsfs token, adlfs account_key/sas_token/connection_string/client_secret.
_SECRET_NAMES = {"key", "secret", "token", "password", "account_key", "connection_string"}
_SECRET_PARTS = ("secret", "token", "password", "access_key", "credential")


@dataclass(frozen=True)
class GliaConfig:
    columns: Columns = field(default_factory=Columns)
    run: RunOptions = field(default_factory=RunOptions)
    near_dup: NearDup = field(default_factory=NearDup)
    tagger_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        """A short, stable hash of everything that changes results."""
        d = self.to_dict()
        d["run"] = {k: v for k, v in d["run"].items() if k not in EXECUTION_KEYS}
        blob = json.dumps(d, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def params_for(self, tagger: str) -> dict[str, Any]:
        """Constructor arguments for a tagger: its ``[taggers.<name>]`` table, and for MinHash
        the signature shape implied by ``[near_dup]``."""
        params = dict(self.tagger_params.get(tagger, {}))
        if tagger == "minhash":
            nd = self.near_dup
            params.update(num_perm=nd.num_perm, ngram=nd.ngram, seed=nd.seed)
        return params


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in table.items():
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of strings, got {value!r}")
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif type(value) is not type(default):
            raise ConfigError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def _check_taggers(cfg: GliaConfig, path: Path) -> None:
    """Fail on unknown tagger names or parameters now, naming the key, not mid-run."""
    from taggers import registry  # here, not at import: the registry imports every tagger

    known = registry.available()
    for name in list(cfg.run.taggers) + list(cfg.tagger_params):
        if name not in known:
            where = "[run].taggers" if name in cfg.run.taggers else f"[taggers.{name}]"
            raise ConfigError(f"{path} {where}: unknown tagger {name!r}; registered taggers: {', '.join(known)}")
    for name in cfg.run.taggers:
        try:
            registry.build([name], {name: cfg.params_for(name)})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path} [taggers.{name}]: {exc}") from None


def _check_stages(cfg: GliaConfig, path: Path) -> None:
    from curation import stages

    known = stages.available()
    for name in list(cfg.run.stages) + list(cfg.stage_params):
        if name not in known:
            where = "[run].stages" if name in cfg.run.stages else f"[stages.{name}]"
            raise ConfigError(f"{path} {where}: unknown stage {name!r}; registered stages: {', '.join(known)}")
    for name in cfg.run.stages:
        try:
            stages.stage_class(name)(**cfg.stage_params.get(name, {}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path} [stages.{name}]: {exc}") from None


def check_storage_options(options: Any, where: str) -> None:
    """Fail unless ``options`` is a table without credentials (at any depth, e.g. inside
    ``client_kwargs``); ``where`` names the key in the message."""
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a table of fsspec arguments, e.g. {{endpoint_url = \"http://...\"}}, "
                          f"got {options!r}")
    for name, value in options.items():
        lowered = str(name).lower()
        if lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS):
            raise ConfigError(
                f"{where}.{name}: credentials do not belong in the rules file (the run's config is recorded in the "
                "catalog); remove it and give them through the environment (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), a profile (storage_options.profile / AWS_PROFILE) "
                "or the provider's credentials file")
        if isinstance(value, dict):
            check_storage_options(value, f"{where}.{name}")


def load_config(path: Path | str | None) -> GliaConfig:
    """Load a rules file; ``None`` gives the defaults."""
    if path is None:
        return GliaConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"rules file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = {"columns", "run", "near_dup", "taggers", "stages"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    cfg = GliaConfig(
        columns=_build(Columns, data.get("columns", {}), f"{path} [columns]"),
        run=_build(RunOptions, data.get("run", {}), f"{path} [run]"),
        near_dup=_build(NearDup, data.get("near_dup", {}), f"{path} [near_dup]"),
        tagger_params={k: dict(v) for k, v in data.get("taggers", {}).items()},
        stage_params={k: dict(v) for k, v in data.get("stages", {}).items()},
    )
    check_storage_options(cfg.run.storage_options, f"{path} [run].storage_options")
    _check_taggers(cfg, path)
    _check_stages(cfg, path)
    nd = cfg.near_dup
    if nd.bands < 1 or nd.rows < 1 or not 0.0 < nd.threshold <= 1.0:
        raise ConfigError(f"{path} [near_dup]: bands and rows must be >= 1 and 0 < threshold <= 1")
    if cfg.run.batch_size < 1:
        raise ConfigError(f"{path} [run].batch_size must be >= 1")
    return cfg
