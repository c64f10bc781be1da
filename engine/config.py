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

    [stages.dedup]       # near duplicates (the old name [near_dup] still works)
    ngram = 3            # word n-grams (shingles)
    bands = 32           # LSH bands x rows = MinHash permutations
    rows = 4
    threshold = 0.5      # estimated Jaccard a candidate pair must reach
"""

from __future__ import annotations

import copy
import hashlib
import logging
import importlib.util
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from glia.core.context import Columns
from glia.core.extras import install_hint, missing_extra
from glia.core.hugepages import check_mode as check_huge_pages
from glia.core.params import ConfigError, build_params

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class RunOptions:
    taggers: tuple[str, ...] = ("exact", "minhash")
    # Night stages (see stages.base). A listed stage whose needs no tagger or stage meets is
    # refused when the rules file loads; the default list keeps only the runnable ones.
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
    # "off": the night opts its process out of transparent huge pages while it runs
    # (core.hugepages: a fresh huge page is zeroed whole, a quarter of the dedup night's CPU on
    # the benchmark VM); "system": leave the kernel's setting. Never changes results (not hashed).
    huge_pages: str = "off"


# RunOptions keys that choose where work runs, not what it computes (left out of the hash).
EXECUTION_KEYS = ("orchestrator", "task_runner", "workers", "dask_address", "dask_gpu_resource", "storage_options",
                  "huge_pages")

# Names (or parts of names) of fsspec arguments that carry secrets: s3fs key/secret/token,
# botocore's aws_*, gcsfs token, adlfs account_key/sas_token/connection_string/client_secret.
_SECRET_NAMES = {"key", "secret", "token", "password", "account_key", "connection_string"}
_SECRET_PARTS = ("secret", "token", "password", "access_key", "credential")


# Sections renamed since a release: old name -> the night stage whose table it is now. The old
# name still reads, with a notice. ``runs.config`` keeps recording that stage's parameters (with
# their defaults) under the old name, as every Glia so far has, so recorded configurations and
# their hashes stay comparable across versions.
RENAMED_SECTIONS: dict[str, str] = {"near_dup": "dedup"}


@dataclass(frozen=True)
class GliaConfig:
    columns: Columns = field(default_factory=Columns)
    run: RunOptions = field(default_factory=RunOptions)
    tagger_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # [taggers.<name>]
    stage_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # [stages.<name>]

    def to_dict(self) -> dict[str, Any]:
        """The configuration as ``runs.config`` records it (see :data:`RENAMED_SECTIONS`)."""
        stages = copy.deepcopy(self.stage_params)
        renamed = {old: asdict(stage_params(stage, stages.pop(stage, {}))) for old, stage in RENAMED_SECTIONS.items()}
        return {"columns": asdict(self.columns), "run": asdict(self.run), **renamed,
                "tagger_params": copy.deepcopy(self.tagger_params), "stage_params": stages}

    def hash(self) -> str:
        """A short, stable hash of everything that changes results."""
        d = self.to_dict()
        d["run"] = {k: v for k, v in d["run"].items() if k not in EXECUTION_KEYS}
        blob = json.dumps(d, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def stage_params_for(self, stage: str) -> dict[str, Any]:
        """A stage's ``[stages.<name>]`` table (its constructor arguments)."""
        return dict(self.stage_params.get(stage, {}))

    def params_for(self, tagger: str) -> dict[str, Any]:
        """A tagger's ``[taggers.<name>]`` table (a night's stages may set more: ``NightStage.tagger_params``)."""
        return dict(self.tagger_params.get(tagger, {}))

    def with_stage_params(self, stage: str, **values: Any) -> GliaConfig:
        """This configuration with ``values`` set in ``[stages.<stage>]``."""
        return replace(self, stage_params={**self.stage_params, stage: {**self.stage_params.get(stage, {}), **values}})


def stage_params(stage: str, table: Mapping[str, Any], where: str | None = None) -> Any:
    """``table`` as the ``Params`` of the registered stage ``stage`` (``ConfigError`` naming the key)."""
    from glia.stages import registry as stages  # here, not at import: the registry imports the stage

    return build_params(stages.stage_class(stage).Params, table, where or f"[stages.{stage}]")


def _check_taggers(cfg: GliaConfig, path: Path) -> None:
    """Fail on unknown tagger names or parameters now, naming the key, not mid-run."""
    from glia.taggers import registry  # here, not at import: the registry imports every tagger

    known = registry.available()
    for name in list(cfg.run.taggers) + list(cfg.tagger_params):
        if name not in known:
            where = "[run].taggers" if name in cfg.run.taggers else f"[taggers.{name}]"
            raise ConfigError(f"{path} {where}: unknown tagger {name!r}; registered taggers: {', '.join(known)}")
    built = {}
    for name in cfg.run.taggers:
        tagger = built[name] = _built(path, "tagger", name, lambda: registry.build([name], {name: cfg.params_for(name)})[0])
        _check_requires(f"tagger {name!r}", tagger.requires, f"{path} [run].taggers")
        _check_clash(cfg, f"tagger {name!r}", tagger.schema().names[1:], path)
    for name, tagger in built.items():  # what a tagger reads from the others
        try:
            tagger.bind(built)
        except ValueError as exc:
            raise ConfigError(f"{path} [taggers.{name}]: {exc}") from None
        missing = sorted(set(tagger.needs) - set(built))
        if missing:
            raise ConfigError(f"{path} [run].taggers: tagger {name!r} needs {', '.join(map(repr, missing))}: add it")


def _built(path: Path, kind: str, name: str, build: Callable[[], Any]) -> Any:
    """``build()`` a tagger or stage (``kind``) for the config check, every failure a ConfigError
    naming the file and the key: its parameters, or the extra a missing module comes from."""
    try:
        return build()
    except ConfigError as exc:  # already names [<kind>s.<name>] and the key
        raise ConfigError(f"{path} {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path} [{kind}s.{name}]: {exc}") from None
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{path} [run].{kind}s: {missing_extra(f'{kind} {name!r}', exc)}") from None


def _check_clash(cfg: GliaConfig, what: str, columns: list[str], path: Path) -> None:
    """A tag column named like a metadata column would be renamed silently in ``v_documents``
    (DuckDB's join makes it ``<name>_1``): refuse it, naming both."""
    metadata = {"doc_id", "row", "shard_id", "shard_path", *cfg.columns.optional()}
    clash = sorted(set(columns) & metadata)
    if clash:
        raise ConfigError(f"{path}: {what} writes {', '.join(map(repr, clash))}, which is also a metadata column "
                          "([columns]); drop it from [columns] (or map another shard column to that name) or leave the tagger out")


def _check_stages(cfg: GliaConfig, path: Path) -> None:
    """Fail on unknown stages, bad parameters, unmet needs, or a tagger table that contradicts
    what a stage sets on that tagger (``NightStage.tagger_params``)."""
    from glia.stages import registry as stages

    known = stages.available()
    for name in list(cfg.run.stages) + list(cfg.stage_params):
        if name not in known:
            where = "[run].stages" if name in cfg.run.stages else f"[stages.{name}]"
            raise ConfigError(f"{path} {where}: unknown stage {name!r}; registered stages: {', '.join(known)}")
    for name in cfg.run.stages:
        stage = _built(path, "stage", name, lambda: stages.stage_class(name)(**cfg.stage_params_for(name)))
        _check_requires(f"stage {name!r}", stage.requires, f"{path} [run].stages")
    try:
        built = stages.build(cfg.run.stages, {n: cfg.stage_params_for(n) for n in cfg.run.stages}, cfg.run.taggers)
    except stages.UnmetNeedsError as exc:
        raise ConfigError(f"{path} [run].stages: {exc}") from None
    for stage in built:
        for tagger, values in stage.tagger_params().items():
            own = cfg.params_for(tagger)
            for key in sorted(k for k in values if k in own and own[k] != values[k]):
                raise ConfigError(f"{path} [taggers.{tagger}].{key} = {own[key]!r}, but stage {stage.name!r} needs "
                                  f"{values[key]!r} there ([stages.{stage.name}] sets it); leave {key} out of "
                                  f"[taggers.{tagger}]")


def _check_requires(what: str, modules: tuple[str, ...], where: str) -> None:
    """Fail now, naming the extra to install, if a module ``what`` imports when it runs is missing."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{where}: {what} needs {module!r}, which this installation lacks: "
                              f"{install_hint(module) or 'install it'}")


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


def _stage_tables(data: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """The ``[stages.<name>]`` tables, a renamed section's under its stage's name (with a notice).
    A stage that ``runs.config`` records under a renamed section is checked even when it does not
    run, since every run records its parameters."""
    tables = {k: dict(v) for k, v in data.get("stages", {}).items()}
    for old, stage in RENAMED_SECTIONS.items():
        where = f"{path} [stages.{stage}]"
        if old in data:
            if stage in tables:
                raise ConfigError(f"{path}: [{old}] and [stages.{stage}] both set the parameters of stage {stage!r}; "
                                  f"keep [stages.{stage}] ([{old}] is its old name)")
            log.warning("%s: [%s] is the old name of [stages.%s]; rename the section (it still works)", path, old, stage)
            tables[stage], where = dict(data[old]), f"{path} [{old}]"
        stage_params(stage, tables.get(stage, {}), where)
    return tables


def _read_toml(path: Path) -> dict[str, Any]:
    """The rules file's tables, or a ConfigError naming what is wrong with the file."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"rules file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = {"columns", "run", "taggers", "stages", *RENAMED_SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return data


def _runnable_default_stages(cfg: GliaConfig) -> GliaConfig:
    """Without ``[run].stages`` the default stages run when the taggers they need do (listed
    stages must be runnable: :func:`_check_stages`)."""
    from glia.stages import registry as stages

    runnable = tuple(s for s in cfg.run.stages if set(stages.stage_class(s).needs) <= set(cfg.run.taggers))
    return replace(cfg, run=replace(cfg.run, stages=runnable))


def load_config(path: Path | str | None) -> GliaConfig:
    """Load a rules file; ``None`` gives the defaults."""
    if path is None:
        return GliaConfig()
    path = Path(path)
    data = _read_toml(path)
    cfg = GliaConfig(
        columns=build_params(Columns, data.get("columns", {}), f"{path} [columns]"),
        run=build_params(RunOptions, data.get("run", {}), f"{path} [run]"),
        tagger_params={k: dict(v) for k, v in data.get("taggers", {}).items()},
        stage_params=_stage_tables(data, path),
    )
    check_storage_options(cfg.run.storage_options, f"{path} [run].storage_options")
    if "stages" not in data.get("run", {}):
        cfg = _runnable_default_stages(cfg)
    _check_taggers(cfg, path)
    _check_stages(cfg, path)
    if cfg.run.batch_size < 1:
        raise ConfigError(f"{path} [run].batch_size must be >= 1")
    try:
        check_huge_pages(cfg.run.huge_pages, f"{path} [run].")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg
