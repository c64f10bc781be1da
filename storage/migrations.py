"""Catalog schema, as an ordered list of migrations.

Each migration runs once, in its own transaction, and is recorded in ``schema_version``.
Never edit a released migration: add a new one.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "runs, shard registry, tag files, history index segments, skipped rows",
        """
        CREATE TABLE runs (
            run_id            INTEGER PRIMARY KEY,
            started_at        TIMESTAMPTZ NOT NULL,
            finished_at       TIMESTAMPTZ,
            status            VARCHAR NOT NULL,   -- completed | nothing_new | failed
            shards_root       VARCHAR NOT NULL,
            config_hash       VARCHAR NOT NULL,
            code_version      VARCHAR NOT NULL,
            n_shards_seen     INTEGER NOT NULL DEFAULT 0,
            n_shards_new      INTEGER NOT NULL DEFAULT 0,
            n_shards_changed  INTEGER NOT NULL DEFAULT 0,
            n_shards_unchanged INTEGER NOT NULL DEFAULT 0,
            n_shards_rejected INTEGER NOT NULL DEFAULT 0,
            n_shards_missing  INTEGER NOT NULL DEFAULT 0,
            n_docs            BIGINT NOT NULL DEFAULT 0,
            n_exact_dups      BIGINT NOT NULL DEFAULT 0,
            n_near_dups       BIGINT NOT NULL DEFAULT 0,
            n_skipped_rows    BIGINT NOT NULL DEFAULT 0,
            seconds           DOUBLE,
            error             VARCHAR,
            config            JSON
        );
        -- One row per version of a shard file: a changed file gets a new shard_id and the
        -- old row becomes 'superseded' (its tags stay on disk, out of the views).
        CREATE TABLE shards (
            shard_id     VARCHAR PRIMARY KEY,
            path         VARCHAR NOT NULL,
            size         BIGINT NOT NULL,
            mtime_ns     BIGINT,
            footer_hash  VARCHAR,
            n_rows       BIGINT,
            n_docs       BIGINT,
            status       VARCHAR NOT NULL,       -- active | superseded | missing | rejected
            first_run    INTEGER NOT NULL,
            last_run     INTEGER NOT NULL,
            error        VARCHAR
        );
        CREATE INDEX shards_path ON shards (path);
        CREATE TABLE tag_files (
            tagger    VARCHAR NOT NULL,
            version   VARCHAR NOT NULL,
            shard_id  VARCHAR NOT NULL,
            path      VARCHAR NOT NULL,
            n_rows    BIGINT NOT NULL,
            run_id    INTEGER NOT NULL,
            PRIMARY KEY (tagger, version, shard_id)
        );
        -- Cross-night state: per-run Parquet segments of the LSH band index, the MinHash
        -- signatures and the exact hashes. Only segments listed here are ever read, so a
        -- crashed run's files are invisible until a rerun rewrites them.
        CREATE TABLE index_segments (
            kind      VARCHAR NOT NULL,          -- lsh | signatures | exact
            run_id    INTEGER NOT NULL,
            path      VARCHAR NOT NULL,
            n_rows    BIGINT NOT NULL,
            params    JSON,
            PRIMARY KEY (kind, run_id)
        );
        CREATE TABLE skipped (
            run_id    INTEGER NOT NULL,
            shard_id  VARCHAR,
            path      VARCHAR NOT NULL,
            "row"     BIGINT,                    -- 0-based row in the shard; NULL = whole shard
            doc_id    VARCHAR,
            reason    VARCHAR NOT NULL
        );
        """,
    ),
    (
        2,
        "run metrics: per-stage counts and seconds per step",
        """
        CREATE TABLE run_metrics (
            run_id  INTEGER NOT NULL,
            metric  VARCHAR NOT NULL,   -- e.g. seconds.tag.minhash, novelty.mean, decide.pruned
            value   DOUBLE,
            PRIMARY KEY (run_id, metric)
        );
        """,
    ),
    (
        3,
        "first_seen: documents whose shard is newer than the document",
        """
        -- A document that arrives in a rewritten, moved or returning shard keeps the run it was
        -- first seen in (the survivor rule ranks by it); the documents view reads it from here.
        CREATE TABLE first_seen (
            doc_id  VARCHAR PRIMARY KEY,
            run_id  INTEGER NOT NULL
        );
        """,
    ),
    (
        4,
        "stage_schema: per-stage migrations of the tables night stages own",
        """
        -- Night stages own tables of their own (decisions, prune queue, replay sets, loss
        -- traces); each stage's schema is a list of migrations like this file's, recorded here.
        -- Databases made before this table existed adopt their stage tables through each
        -- stage's first migration, which is CREATE ... IF NOT EXISTS for that reason.
        CREATE TABLE stage_schema (
            stage       VARCHAR NOT NULL,
            version     INTEGER NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL,
            description VARCHAR,
            PRIMARY KEY (stage, version)
        );
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]

# A stage's own schema: (version, description, SQL), oldest first. Never edit a released one.
StageMigration = tuple[int, str, str]
