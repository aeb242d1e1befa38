"""The ``compactor`` executable against the S3 API server (moto over HTTP on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow.parquet as pq

from tests.cli.conftest import compactor, replay, upserts, write_parquet

_CLOSED_PORT = "http://127.0.0.1:9"


def test_workflow_on_s3_in_place_and_copied(s3_bucket: str, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}"
    table = f"{root}/lake/orders"
    base = upserts(list(range(300)), "base", 0)
    cdc = {"Op": ["U", "D", "I"], **upserts([1, 2, 500], "cdc", 1000)}
    late = upserts([3, 501], "late", 2000)
    write_parquet(f"{root}/exports/2024/LOAD0001.parquet", base)
    write_parquet(f"{root}/exports/2024/CDC0001.parquet", cdc)
    local = write_parquet(tmp_path / "late.parquet", late)

    created = compactor("table", "create", table, "-k", "id", "--order-by", "lsn",
                        "--buckets", "2", "--schema-from", f"{root}/exports/2024/CDC0001.parquet",
                        "--drop-column", "Op")
    assert created.code == 0, created
    steps = [
        compactor("append", table, "--kind", "upsert", f"{root}/exports/2024/LOAD*.parquet",
                  "--json"),
        compactor("append", table, "--kind", "cdc", f"{root}/exports/2024/CDC0001.parquet"),
    ]
    assert [s.code for s in steps] == [0, 0], steps
    assert steps[0].json()["file_urls"] == [f"{root}/exports/2024/LOAD0001.parquet"]  # in place
    foreign = compactor("append", table, "--kind", "upsert", local)
    assert foreign.code == 1 and "use --copy" in foreign.err and local in foreign.err
    copied = compactor("append", table, "--kind", "upsert", local, "--copy", "--json")
    assert copied.code == 0, copied
    assert copied.json()["file_urls"][0].startswith(f"{table}/partitions/default/data/")

    compacted = compactor("compact", table, "--json")
    assert compacted.code == 0, compacted
    expected = replay([("upsert", base), ("cdc", {**cdc, "op": [o.lower() for o in cdc["Op"]]}),
                       ("upsert", late)])
    assert compacted.json()["rows_out"] == len(expected)
    verified = compactor("verify", table, "--json")
    assert verified.code == 0 and verified.json()["ok"], verified

    exported = compactor("read", table, "--to", f"{root}/export/now/", "--json")
    assert exported.code == 0, exported
    fs = fsspec.filesystem("s3")
    [file] = [f["url"] for f in exported.json()["files"]]
    with fs.open(file) as f:
        data = pq.read_table(f)
    assert sorted(data["id"].to_pylist()) == sorted(expected)

    # Rewriting a compacted object changes its ETag: verify fails and names it.
    shown = compactor("show", table, "--files", "--json").json()
    victim = next(f["url"] for b in shown["partitions"][0]["compacted"]["buckets"]
                  for f in b["file_list"])
    with fs.open(victim) as f:
        rewritten = pq.read_table(f).slice(1)
    with fs.open(victim, "wb") as f:
        pq.write_table(rewritten, f)
    broken = compactor("verify", table)
    assert broken.code == 1 and victim in broken.out, broken


def test_endpoint_url_option_and_a_bucket_that_does_not_exist(s3_server: str,
                                                               s3_bucket: str) -> None:
    table = f"s3://{s3_bucket}/t"
    elsewhere = {"AWS_ENDPOINT_URL": _CLOSED_PORT}  # only --endpoint-url reaches the server
    created = compactor("table", "create", table, "-k", "id", "--schema", "id:int64",
                        "--endpoint-url", s3_server, env=elsewhere)
    assert created.code == 0, created
    shown = compactor("show", table, "--json", "--endpoint-url", s3_server, env=elsewhere)
    assert shown.code == 0, shown
    assert shown.json()["table"]["url"] == table and shown.json()["partitions"] == []

    nowhere = "s3://no-such-bucket-for-compactor/t"
    missing = compactor("show", nowhere)
    assert missing.code == 1, missing
    [line] = missing.err.splitlines()
    assert nowhere in line and "Traceback" not in missing.err
