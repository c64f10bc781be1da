"""Shards on an S3-compatible object store behave like a local folder: discovery, fingerprints,
incremental nights, bad inputs and the dataloader, against a real server (moto's, on 127.0.0.1).

The endpoint and credentials reach s3fs the two ways users configure them: the standard AWS
environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), and
``[run].storage_options`` in the rules file, which must reach every place a shard is opened,
including Dask worker processes and the replay dataloader.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

s3fs = pytest.importorskip("s3fs", reason="install the s3 extra: pip install -e '.[s3]'")
pytest.importorskip("moto", reason="install the test extra (moto[server])")

from conftest import NIGHTS, free_port, glia, query, run_night, wait_healthy  # noqa: E402
from glia.engine.config import ConfigError, GliaConfig, load_config  # noqa: E402
from glia.engine.night import is_transient  # noqa: E402
from glia.curation.dataloader import ReplayPlan, ShardTextReader, iter_replay  # noqa: E402
from glia.curation.replay import ReplayParams  # noqa: E402
from glia.engine.replay import build_from_catalog  # noqa: E402
from glia.engine.ingest import ReadSpec, ShardRejected, read_documents, scan_ids  # noqa: E402
from glia.storage.shards import discover, fingerprint, is_storage_error  # noqa: E402

BUCKET = "glia-corpus"


@dataclass
class S3Server:
    endpoint: str
    fs: s3fs.S3FileSystem  # the test's own client, for uploads (not the instance Glia uses)

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe(f"{BUCKET}/{key}", data)

    def upload_night(self, n: int, prefix: str) -> dict[str, bytes]:
        """Night ``n``'s example shards under ``prefix/night<n>/``; key -> bytes."""
        out = {}
        for p in sorted(NIGHTS[n].glob("*.parquet")):
            key = f"{prefix}/night{n}/{p.name}"
            out[key] = p.read_bytes()
            self.put(key, out[key])
        return out


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free 127.0.0.1 port with one bucket; fake credentials and the
    endpoint in the AWS environment variables (isolated from any ~/.aws of this user)."""
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = tmp / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{endpoint}/moto-api/", proc, log, 60, "moto_server")
        with pytest.MonkeyPatch.context() as mp:
            for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(var, raising=False)
            mp.setenv("AWS_CONFIG_FILE", str(tmp / "no-config"))
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-credentials"))
            mp.setenv("AWS_ACCESS_KEY_ID", "glia-test")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "glia-test-secret")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            s3fs.S3FileSystem.clear_instance_cache()
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir(BUCKET)
            yield S3Server(endpoint, fs)
    finally:
        # Cached filesystems would keep pointing at this server after it is gone.
        s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _texts(objects: dict[str, bytes]) -> dict[str, str]:
    """doc id -> text over the objects that are Parquet with a ``text`` column."""
    out: dict[str, str] = {}
    for data in objects.values():
        if data.startswith(b"PAR1") and "text" in pq.read_schema(io.BytesIO(data)).names:
            t = pq.read_table(io.BytesIO(data), columns=["id", "text"])
            out.update(zip(t["id"].to_pylist(), t["text"].to_pylist()))
    return out


def _shards(db: Path) -> dict[str, list[str]]:
    """path -> statuses of its versions, oldest first."""
    out: dict[str, list[str]] = {}
    for path, status in query(db, "SELECT path, status FROM shards ORDER BY path, first_run"):
        out.setdefault(path, []).append(status)
    return out


def test_nights_on_s3_discover_fingerprint_and_change_like_a_folder(s3: S3Server, tmp_path: Path) -> None:
    prefix = f"nights-{uuid.uuid4().hex[:8]}"
    root = f"s3://{BUCKET}/{prefix}"
    objects = s3.upload_night(1, prefix)
    keys = sorted(objects)
    db = tmp_path / "glia.duckdb"  # the catalog and the state folder stay local

    first = run_night(root, db)  # type: ignore[arg-type]
    assert first.status == "completed" and first.rejected == {}
    assert first.counts["shards_new"] == 3
    assert [p for (p,) in query(db, "SELECT path FROM shards ORDER BY path")] == [f"s3://{BUCKET}/{k}" for k in keys]
    assert query(db, "SELECT count(DISTINCT shard_id) FROM documents") == [(3,)]
    ids = set(_texts(objects))
    assert {d for (d,) in query(db, "SELECT doc_id FROM v_documents")} == ids
    assert first.counts["docs"] == len(ids) == 1500
    assert query(db, "SELECT count(*) FROM v_duplicates")[0][0] > 0
    assert (tmp_path / "glia_data" / "tags").is_dir()

    again = run_night(root, db)  # type: ignore[arg-type]
    assert again.status == "nothing_new"
    assert again.counts["shards_unchanged"] == 3 and again.counts["docs"] == 0

    # A rewritten object is a new version of the same path; the old one is superseded.
    rewritten, deleted = keys[0], keys[1]
    objects[rewritten] = (NIGHTS[2] / "part-00000.parquet").read_bytes()
    s3.put(rewritten, objects[rewritten])
    changed = run_night(root, db)  # type: ignore[arg-type]
    assert changed.status == "completed"
    assert changed.counts["shards_changed"] == 1 and changed.counts["shards_unchanged"] == 2
    assert changed.counts["docs"] == 400
    assert _shards(db)[f"s3://{BUCKET}/{rewritten}"] == ["superseded", "active"]

    # A deleted object goes missing: its documents leave the views, nothing is deleted.
    s3.fs.rm(f"{BUCKET}/{deleted}")
    del objects[deleted]
    gone = run_night(root, db)  # type: ignore[arg-type]
    assert gone.counts["shards_missing"] == 1
    assert _shards(db)[f"s3://{BUCKET}/{deleted}"] == ["missing"]

    # Bad objects are rejected with the file and the reason, like local ones.
    not_parquet = f"{prefix}/night1/notes.parquet"
    no_text = f"{prefix}/night1/no_text.parquet"
    objects[not_parquet] = b"id,text\nx-1,a CSV file with a Parquet name\n"
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["nt-1", "nt-2"], "body": ["one", "two"]}), buf)
    objects[no_text] = buf.getvalue()
    s3.put(not_parquet, objects[not_parquet])
    s3.put(no_text, objects[no_text])
    bad = run_night(root, db)  # type: ignore[arg-type]
    assert bad.counts["shards_rejected"] == 2
    rejected = dict(query(db, "SELECT path, error FROM v_shards WHERE status = 'rejected'"))
    assert "not a Parquet file" in rejected[f"s3://{BUCKET}/{not_parquet}"]
    assert "missing required text column 'text'" in rejected[f"s3://{BUCKET}/{no_text}"]
    skipped = dict(query(db, "SELECT path, reason FROM v_skipped WHERE \"row\" IS NULL"))
    assert f"s3://{BUCKET}/{not_parquet}" in skipped and f"s3://{BUCKET}/{no_text}" in skipped

    # The dataloader reads every active document's text back from the bucket.
    texts = _texts(objects)
    docs = query(db, 'SELECT doc_id, shard_path, "row" FROM v_documents ORDER BY doc_id')
    assert {d for d, _, _ in docs} == set(texts)
    assert all(p.startswith(f"s3://{BUCKET}/") for _, p, _ in docs)
    got = ShardTextReader().read(pa.array([p for _, p, _ in docs]), pa.array([r for _, _, r in docs]).to_numpy(),
                                 pa.array([d for d, _, _ in docs]))
    assert got == [texts[d] for d, _, _ in docs]


def test_glia_run_on_an_s3_url(s3: S3Server, tmp_path: Path) -> None:
    """The command line, configured by the AWS environment variables alone."""
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    s3.upload_night(1, prefix)
    db = tmp_path / "glia.duckdb"
    out = glia(["run", f"s3://{BUCKET}/{prefix}", "--db", str(db)], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert query(db, "SELECT count(*), min(path) FROM shards WHERE status = 'active'") == [
        (3, f"s3://{BUCKET}/{prefix}/night1/part-00000.parquet")]
    again = glia(["run", f"s3://{BUCKET}/{prefix}", "--db", str(db)], tmp_path)
    assert again.returncode == 0 and "nothing new" in (again.stdout + again.stderr).lower(), again.stdout


def test_etag_tells_a_rewrite_that_keeps_the_footer(s3: S3Server) -> None:
    """Two files of equal size and equal footer (one character changed, no statistics, no
    compression): the footer hash alone cannot tell them apart, the object's ETag can."""
    def shard(text: str) -> bytes:
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["first", text, "third"]}), buf,
                       compression="NONE", use_dictionary=False, write_statistics=False)
        return buf.getvalue()

    def footer(data: bytes) -> bytes:
        return data[-8 - struct.unpack("<i", data[-8:-4])[0]:-8]

    before, after = shard("middle"), shard("muddle")
    assert len(before) == len(after) and before != after and footer(before) == footer(after)
    mem = fsspec.filesystem("memory")
    mem.pipe("/etag/a.parquet", before)
    mem.pipe("/etag/b.parquet", after)
    assert fingerprint(mem, "/etag/a.parquet", "x").footer_hash == fingerprint(mem, "/etag/b.parquet", "x").footer_hash

    key = f"etag-{uuid.uuid4().hex[:8]}/a.parquet"
    s3.put(key, before)
    (v1,) = discover(f"s3://{BUCKET}/{key.split('/')[0]}")
    s3.put(key, after)
    (v2,) = discover(f"s3://{BUCKET}/{key.split('/')[0]}")
    (v2_again,) = discover(f"s3://{BUCKET}/{key.split('/')[0]}")
    assert v1.error is None and v1.size == v2.size
    assert v1.shard_id != v2.shard_id and v2.shard_id == v2_again.shard_id


def test_storage_options_from_the_rules_file_reach_dask_workers_and_the_dataloader(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the environment's endpoint pointing nowhere, the run only works if the rules
    file's endpoint reaches discovery, the ingest and tag tasks in Dask worker processes, and
    (recorded with the run) the replay dataloader."""
    from glia.flows import nightly

    prefix = f"rules-{uuid.uuid4().hex[:8]}"
    objects = s3.upload_night(1, prefix)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    s3fs.S3FileSystem.clear_instance_cache()  # no filesystem made with the working endpoint
    rules = tmp_path / "glia.toml"
    rules.write_text(f'[run]\ntask_runner = "dask"\nworkers = 2\n'
                     f'storage_options = {{endpoint_url = "{s3.endpoint}", anon = false}}\n')
    db = tmp_path / "glia.duckdb"

    flow = nightly.nightly_for(str(rules))
    out = flow(shards_root=f"s3://{BUCKET}/{prefix}", db_path=str(db), rules_path=str(rules))
    assert out.status == "completed" and out.rejected == {}
    assert out.counts["shards_new"] == 3 and out.counts["docs"] == 1500

    build_from_catalog(db, ReplayParams(size=200))
    plan = ReplayPlan.from_db(db)
    assert plan.storage_options == {"endpoint_url": s3.endpoint, "anon": False}
    texts = _texts(objects)
    items = list(iter_replay(plan, seed=1))
    assert len(items) == 200
    assert all(i["text"] == texts[i["doc_id"]] for i in items)

    # The dashboard's document page reads the text the same way, with the recorded settings.
    from glia.dashboards.data import Db, document

    doc_id = items[0]["doc_id"]
    view = document(Db(db), doc_id)
    assert view is not None and view.text_error is None and view.text == texts[doc_id]


def test_credentials_in_the_rules_file_are_refused(tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    for table, key in (('{key = "AKIA", endpoint_url = "http://x"}', "key"),
                       ('{client_kwargs = {aws_secret_access_key = "s"}}', "client_kwargs.aws_secret_access_key"),
                       ('{token = "t"}', "token")):
        rules.write_text(f"[run]\nstorage_options = {table}\n")
        with pytest.raises(ConfigError, match=rf"\[run\]\.storage_options\.{key}: credentials do not belong"):
            load_config(rules)
    rules.write_text('[run]\nstorage_options = "http://x"\n')
    with pytest.raises(ConfigError, match=r"storage_options: expected a table"):
        load_config(rules)
    rules.write_text('[run]\nstorage_options = {endpoint_url = "http://minio:9000", profile = "corpus"}\n')
    cfg = load_config(rules)
    assert cfg.run.storage_options == {"endpoint_url": "http://minio:9000", "profile": "corpus"}
    assert cfg.hash() == GliaConfig().hash()  # where the shards are read from is not what they say


def test_an_unreachable_endpoint_says_what_to_configure(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OSError, match=r"cannot list s3://glia-corpus/x: .*AWS_ENDPOINT_URL.*\[run\]\.storage_options"):
        discover(f"s3://{BUCKET}/x", storage_options={"endpoint_url": dead})


def test_an_unreachable_store_fails_the_read_instead_of_rejecting_the_shard(
        s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected shard stays rejected until its bytes change, so a network failure while
    reading must raise (the task is retried, then the night fails), never reject it."""
    key = f"gone-{uuid.uuid4().hex[:8]}/a.parquet"
    s3.put(key, (NIGHTS[1] / "part-00000.parquet").read_bytes())
    (shard,) = discover(f"s3://{BUCKET}/{key}")
    assert shard.error is None
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    dead = {"endpoint_url": f"http://127.0.0.1:{free_port()}"}
    cols = GliaConfig().columns
    with pytest.raises(Exception) as scan:
        scan_ids(shard, cols, dead)
    with pytest.raises(Exception) as read:
        next(read_documents(ReadSpec(shard, cols, 100, storage_options=dead)))
    for exc in (scan.value, read.value):
        assert not isinstance(exc, ShardRejected) and is_storage_error(exc), repr(exc)
        assert is_transient(exc), f"the night's executor would not retry {exc!r}"
    # Bad bytes are still rejected, with the reason.
    s3.put(key, b"PAR1" + b"\0" * 64 + b"PAR1")
    (bad,) = discover(f"s3://{BUCKET}/{key}")
    assert bad.error is not None and "corrupt Parquet footer" in bad.error
