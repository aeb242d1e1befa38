"""The ``compactor`` executable on local disk with the local backend: a whole workflow,
``--dry-run``, ``verify`` against corrupted files, racing rounds, and the demo."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compactor.faults import ENV
from tests.cli.conftest import (
    SCHEMA,
    compactor,
    in_terminal,
    replace_keeping_fingerprint,
    replay,
    start,
    upserts,
    write_parquet,
)

DAY = "day=2024-05-01"


def _files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_workflow_create_append_compact_show_history_verify_read(tmp_path: Path) -> None:
    table = tmp_path / "orders"
    exports = tmp_path / "exports"
    base = upserts(list(range(100)), "base", 0)
    cdc = {"op": ["u", "d", "i", "u"], **upserts([5, 6, 200, 5], "cdc", 100)}
    deletes = {"id": [7, 8], "lsn": [150, 1]}  # key 8's delete is older than its upsert: loses
    write_parquet(exports / "base" / "part-0.parquet", {k: v[:60] for k, v in base.items()})
    write_parquet(exports / "base" / "part-1.parquet", {k: v[60:] for k, v in base.items()})
    write_parquet(exports / "base" / "_SUCCESS.parquet", base)  # marker names are skipped
    write_parquet(exports / "cdc-0001.parquet", cdc)
    write_parquet(exports / "deletes.parquet", deletes)

    created = compactor("table", "create", table, "--primary-key", "id", "--order-by", "lsn",
                        "--partition-by", "day", "--buckets", "4", "--schema", SCHEMA, "--json")
    assert created.code == 0, created
    assert created.json()["primary_key"] == ["id"]
    assert created.json()["partition_by"] == ["day"]

    appended = [
        compactor("append", table, "-p", DAY, "--kind", "upsert", exports / "base", "--json"),
        compactor("append", table, "-p", DAY, "--kind", "cdc", "--op-column", "op",
                  "--op-values", "i=upsert,u=upsert,d=delete", str(exports / "cdc-*.parquet")),
        compactor("append", table, "-p", DAY, "--kind", "delete", exports / "deletes.parquet"),
    ]
    assert [a.code for a in appended] == [0, 0, 0], appended
    first = appended[0].json()
    assert first["delta"]["files"] == 2 and first["delta"]["rows"] == 100
    assert first["file_urls"][0].endswith("exports/base/part-0.parquet")  # in place, in order

    shown = compactor("show", table, "-p", DAY, "--json")
    assert shown.code == 0, shown
    [part] = shown.json()["partitions"]
    assert [d["kind"] for d in part["pending"]["deltas"]] == ["upsert", "cdc", "delete"]
    assert part["compacted"] is None

    compacted = compactor("compact", table, "-p", DAY, "--target-file-size", "64MB",
                          "--compression", "snappy", "--json")
    assert compacted.code == 0, compacted
    files = compactor("show", table, "-p", DAY, "--files", "--json").json()
    metrics = files["partitions"][0]["compacted"]["metrics"]
    assert isinstance(metrics["rows_in"], int) and metrics["rows_in"] > 0, metrics  # (not 5.0)
    urls = [f["url"] for b in files["partitions"][0]["compacted"]["buckets"]
            for f in b["file_list"]]
    assert urls and {pq.ParquetFile(u.removeprefix("file://")).metadata.row_group(0).column(0)
                     .compression for u in urls} == {"SNAPPY"}
    result = compacted.json()
    expected = replay([("upsert", base), ("cdc", cdc), ("delete", deletes)])
    assert result["committed"] and result["position"] == 4 and result["high_watermark_after"] == 3
    assert result["rows_in"] == 106 and result["rows_out"] == len(expected)
    assert "hash_bucket" in compacted.err and "materialize" in compacted.err  # log lines: no TTY

    verified = compactor("verify", table, "-p", DAY)
    assert verified.code == 0, verified
    assert verified.out.startswith("OK")

    log = compactor("history", table, "-p", DAY, "--json").json()
    assert [(c["commit"], c["type"]) for c in log["commits"]] == [
        (1, "delta"), (2, "delta"), (3, "delta"), (4, "compaction")]
    assert log["commits"][3]["rows"] == len(expected)
    assert compactor("history", table, "-p", DAY, "--limit", "1", "--json").json()[
        "commits"][0]["commit"] == 4

    out = tmp_path / "now"
    exported = compactor("read", table, "-p", DAY, "--to", out, "--json")
    assert exported.code == 0, exported
    data = pq.read_table(out).sort_by("id")
    assert data.schema.names == ["id", "v", "lsn"]
    assert dict(zip(data["id"].to_pylist(),
                    zip(data["v"].to_pylist(), data["lsn"].to_pylist(), strict=True),
                    strict=True)) == expected
    again = compactor("read", table, "-p", DAY, "--to", out)
    assert again.code == 1 and "not empty" in again.err

    nothing = compactor("compact", table, "-p", DAY, "--json")
    assert nothing.code == 0 and nothing.json()["committed"] is False
    # said before any runtime starts: a Ray cluster that is not there is never asked
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    nowhere = compactor("compact", table, "-p", DAY, "--backend", "ray", "--address",
                        f"ray://127.0.0.1:{closed}")
    assert nowhere.code == 0 and "nothing to do" in nowhere.out, nowhere
    assert "runtime" not in nowhere.err, nowhere
    dry = compactor("compact", table, "-p", DAY, "--dry-run", "--backend", "ray", "--address",
                    f"ray://127.0.0.1:{closed}")  # (a plan would ask the cluster its size)
    assert dry.code == 0 and "nothing to do" in dry.out, dry

    listing = compactor("show", table)  # a partitioned table without -p: one line per partition
    assert listing.code == 0 and DAY in listing.out
    tables = compactor("show", tmp_path, "--json")  # not a table: the tables under it
    assert [t["table"]["url"] for t in tables.json()["tables"]] == [f"file://{table}"]


def test_dry_run_changes_nothing_and_a_round_on_a_terminal_shows_bars(table_url: str,
                                                                    tmp_path: Path) -> None:
    compactor("table", "create", table_url, "-k", "id", "--order-by", "lsn", "--schema", SCHEMA)
    for n in range(2):
        data = write_parquet(tmp_path / f"in-{n}.parquet", upserts([1, 2, 3], f"r{n}", 10 * n))
        assert compactor("append", table_url, "--kind", "upsert", data).code == 0
    before = _files_under(Path(table_url))

    plan = compactor("compact", table_url, "--dry-run", "--target-file-size", "1GiB", "--json")
    assert plan.code == 0, plan
    info = plan.json()
    assert info["dry_run"] and not info["nothing_to_do"]
    assert [d["position"] for d in info["deltas"]] == [1, 2]
    assert info["rows_in"] == 6 and info["hash_tasks"] == 1  # two small files share one
    assert info["target_file_size"] == 2**30 and info["hash_task_memory"]["min"] > 0
    text = compactor("compact", table_url, "--dry-run", "--buckets", "8")
    assert text.code == 0 and "dry run, nothing changed" in text.out and "8 in" in text.out
    assert "about 1 files per bucket" in text.out and "warning" not in text.out, text

    assert _files_under(Path(table_url)) == before
    assert compactor("history", table_url, "--json").json()["head"] == 2

    code, screen = in_terminal("compact", table_url)
    assert code == 0, screen
    assert "━" in screen and "hash_bucket" in screen and "materialize" in screen  # bars
    assert "s] hash_bucket" not in screen  # not the log lines of a pipe
    assert "compacted" in screen and "peak memory" in screen  # the summary
    assert compactor("history", table_url, "--json").json()["head"] == 3


def test_a_dry_run_warns_of_more_files_in_a_bucket_than_a_round_writes(table_url: str,
                                                                         tmp_path: Path) -> None:
    """A target so small that a bucket would need more than MAX_FILES_PER_BUCKET files: the
    round refuses before writing any; its dry run said nothing of it (exit 0, '1 rows per
    file')."""
    compactor("table", "create", table_url, "-k", "id", "--order-by", "lsn", "--buckets", "1",
              "--schema", SCHEMA)
    rows = 70_000
    data = write_parquet(tmp_path / "in.parquet", upserts(list(range(rows)), "v", 0))
    assert compactor("append", table_url, "--kind", "upsert", data).code == 0
    plan = compactor("compact", table_url, "--dry-run", "--target-file-size", "1", "--json")
    assert plan.code == 0, plan
    assert (plan.json()["files_per_bucket"], plan.json()["files_per_bucket_limit"]) == (
        rows, 65_536)
    text = compactor("compact", table_url, "--dry-run", "--target-file-size", "1")
    assert "about 70,000 files per bucket" in text.out, text
    assert "warning: a bucket may need more than 65,536 files, which the round refuses" in \
        " ".join(text.out.split()), text
    refused = compactor("compact", table_url, "--target-file-size", "1")
    assert refused.code == 1 and "bucket 0 would hold 70000 files, more than 65536" in \
        refused.err, refused
    assert compactor("history", table_url, "--json").json()["head"] == 1


def test_verify_catches_corrupted_compacted_files(table_url: str, tmp_path: Path) -> None:
    compactor("table", "create", table_url, "-k", "id", "--order-by", "lsn", "--buckets", "2",
              "--schema", SCHEMA)
    rows = upserts(list(range(1000)), "v", 0)
    compactor("append", table_url, "--kind", "upsert", write_parquet(tmp_path / "a.parquet", rows))
    assert compactor("compact", table_url).code == 0
    shown = compactor("show", table_url, "--files", "--json").json()
    urls = [f["url"] for b in shown["partitions"][0]["compacted"]["buckets"]
            for f in b["file_list"]]
    first, second = (Path(u.removeprefix("file://")) for u in urls[:2])

    # Other valid rows, same size and mtime: the fingerprint matches, only the data differs.
    data = pq.read_table(first)
    ids, values = data["id"].to_pylist(), data["v"].to_pylist()
    changed, replaced = ids[0], ids[1]
    values[0] = "corrupted"
    ids[1] = 10**9
    replace_keeping_fingerprint(first, data.set_column(0, "id", pa.array(ids))
                                .set_column(1, "v", pa.array(values)))
    report = compactor("verify", table_url, "--json")
    assert report.code == 1 and report.json()["exit_code"] == 1, report
    found = {(d["kind"], d["key"]["id"]) for d in report.json()["differences"]}
    assert found == {("changed", changed), ("missing", replaced), ("unexpected", 10**9)}
    [diff] = [d for d in report.json()["differences"] if d["kind"] == "changed"]
    assert diff["columns"] == ["v"] and diff["actual"] == {"v": "corrupted"}
    text = compactor("verify", table_url)
    assert text.code == 1 and text.out.startswith("FAILED")
    assert f"id={changed}" in text.out and f"id={replaced}" in text.out

    # A plain rewrite changes the fingerprint: reported by name, still a failure.
    pq.write_table(pq.read_table(second).slice(1), second)
    report = compactor("verify", table_url, "--json")
    assert report.code == 1, report
    assert str(second) in report.json()["error"] and "changed" in report.json()["error"]
    # (the keys of every command's --json failure)
    assert (report.json()["error_type"], report.json()["exit_code"]) == ("ChangedFile", 1)


def _compacted_and_verified(url: str) -> tuple[Path, pa.Table]:
    """Compact the one-bucket table at ``url``, check verify says OK; its compacted file (path
    and rows)."""
    assert compactor("compact", url).code == 0
    report = compactor("verify", url, "--json")
    assert report.code == 0 and report.json()["ok"], report
    [path] = [Path(f["url"].removeprefix("file://")) for b in compactor(
        "show", url, "--files", "--json").json()["partitions"][0]["compacted"]["buckets"]
        for f in b["file_list"]]
    return path, pq.read_table(path)


def test_verify_takes_types_duckdb_holds_otherwise_and_names_those_it_cannot(
        tmp_path: Path) -> None:
    """256-bit decimals of up to 38 digits (nested too) and half floats are checked as DuckDB's
    decimals and floats, a corrupted one is found; wider decimals are refused, named."""
    from decimal import Decimal

    import numpy as np

    from compactor import create_table

    schema = pa.schema([("id", pa.int64()), ("lsn", pa.int64()), ("d", pa.decimal256(20, 2)),
                        ("h", pa.float16()), ("ds", pa.list_(pa.decimal256(10, 1)))])
    url = f"file://{tmp_path}/t"
    part = create_table(url, schema, primary_key=("id",), ordering_column="lsn",
                        bucket_count=1).partition()
    rows = pa.table({"id": [1, 2, 3], "lsn": [1, 2, 3],
                     "d": [Decimal("123456789012345678.50"), None, Decimal("-1.25")],
                     "h": pa.array(np.array([1.5, np.nan, -0.25], np.float16)),
                     "ds": [[Decimal("1.5")], None, [Decimal("-9.9"), None]]}, schema=schema)
    part.append(rows)
    path, stored = _compacted_and_verified(url)
    changed = stored.set_column(2, "d", pa.array(
        [Decimal("123456789012345678.51"), None, Decimal("-1.25")], pa.decimal256(20, 2)))
    replace_keeping_fingerprint(path, changed)
    report = compactor("verify", url, "--json")
    assert report.code == 1 and [(d["kind"], d["columns"]) for d in
                                 report.json()["differences"]] == [("changed", ["d"])]

    wide = f"file://{tmp_path}/wide"
    create_table(wide, pa.schema([("id", pa.int64()), ("w", pa.list_(pa.decimal256(50, 2)))]),
                 primary_key=("id",)).partition().append(
        pa.table({"id": [1], "w": pa.array([[Decimal("1.00")]], pa.list_(pa.decimal256(50, 2)))}))
    assert compactor("compact", wide).code == 0
    refused = compactor("verify", wide)
    assert refused.code == 1 and refused.err.strip() == (
        f"error: table {wide}: column 'w' has type list<item: decimal256(50, 2)>: verify "
        "recomputes the state "
        "with DuckDB, which has no type for decimal256(50, 2) (its decimals hold at most 38 "
        "digits)")


def test_verify_tells_columns_apart_by_case_and_from_its_own_and_names_what_duckdb_cannot_read(
        tmp_path: Path) -> None:
    """Inside DuckDB, whose names ignore case, columns go by position: a table with columns
    V and v, a key k beside a column K, and columns named as verify's own (__ord, __rank,
    __copies) is checked exactly, durations as their counts, and a changed value is reported
    under its column's own name. A file DuckDB cannot read (text that is not UTF-8, a column it
    would name as its row numbers) is an error that says so."""
    import datetime

    from compactor import create_table

    schema = pa.schema([("k", pa.int64()), ("K", pa.int64()), ("V", pa.string()),
                        ("v", pa.int64()), ("__ord", pa.string()), ("__rank", pa.int64()),
                        ("__copies", pa.int64()), ("lsn", pa.int64()),
                        ("took", pa.duration("ms"))])
    url = f"file://{tmp_path}/t"
    part = create_table(url, schema, primary_key=("k",), ordering_column="lsn",
                        bucket_count=1).partition()
    rows = [{"k": i, "K": -i, "V": f"s{i}", "v": 10 * i, "__ord": "x", "__rank": i % 2,
             "__copies": 7, "lsn": i, "took": datetime.timedelta(milliseconds=i)}
            for i in range(1, 6)]
    part.append(pa.Table.from_pylist(rows, schema=schema))
    part.append(pa.Table.from_pylist([{**rows[1], "v": 99, "V": "new", "lsn": 9}], schema=schema))
    path, stored = _compacted_and_verified(url)
    at = stored.column("k").to_pylist().index(3)
    values = stored.column("v").to_pylist()
    values[at] = -1
    replace_keeping_fingerprint(path, stored.set_column(3, "v", pa.array(values, pa.int64())))
    report = compactor("verify", url, "--json")
    assert report.code == 1, report
    assert [(d["kind"], d["key"], d["columns"], d["expected"], d["actual"])
            for d in report.json()["differences"]] == [
        ("changed", {"k": 3}, ["v"], {"v": 30}, {"v": -1})]

    for name, data, error in [
        ("rownumber", pa.table({"k": [1], "file_row_number": [5]}),
         "has a column named 'file_row_number', the name DuckDB gives the row numbers"),
        ("latin1", pa.table({"k": [1, 2], "s": pa.array([b"ok", b"caf\xe9"]).view(pa.string())}),
         "DuckDB, verify's engine, cannot read the data: Invalid Input Error"),
    ]:
        other = f"file://{tmp_path}/{name}"
        create_table(other, data.schema, primary_key=("k",)).partition().append(data)
        assert compactor("compact", other).code == 0
        refused = compactor("verify", other)
        assert refused.code == 1 and error in refused.err, refused


def test_verify_reads_a_column_named_as_the_partition_from_the_file_not_the_path(
        tmp_path: Path) -> None:
    """Files live under partitions/region=eu/: DuckDB, left to guess, takes a column named
    region from the path (hive partitioning) instead of the file."""
    from compactor import create_table

    url = f"file://{tmp_path}/t"
    table = create_table(url, pa.schema([("k", pa.int64()), ("region", pa.string())]),
                         primary_key=["k"], partition_by=["region"], bucket_count=1)
    table.partition({"region": "eu"}).append(pa.table({"k": [1, 2],
                                                       "region": ["EU-west", "EU-north"]}))
    assert compactor("compact", url, "-p", "region=eu").code == 0
    report = compactor("verify", url, "-p", "region=eu", "--json")
    assert report.code == 0 and report.json()["ok"], report


def test_verify_fails_a_partition_whose_cdc_file_now_holds_an_unknown_op(tmp_path: Path) -> None:
    """A delta file changed under its fingerprint to hold an op no delta allows: the partition
    fails verification (it is not a table verify cannot check)."""
    from compactor import CdcOps, DeltaKind, create_table

    url = f"file://{tmp_path}/t"
    table = create_table(url, pa.schema([("k", pa.int64()), ("v", pa.int64())]),
                         primary_key=["k"], bucket_count=1)
    source = tmp_path / "cdc.parquet"
    pq.write_table(pa.table({"k": [1, 2], "v": [1, 2], "Op": ["I", "I"]}), source)
    table.partition().register([f"file://{source}"], kind=DeltaKind.CDC, cdc=CdcOps("Op"))
    assert compactor("compact", url).code == 0
    replace_keeping_fingerprint(source, pa.table({"k": [1, 2], "v": [1, 2], "Op": ["I", "X"]}))
    report = compactor("verify", url, "--json")
    assert report.code == 1, report
    assert report.json()["error_type"] != "NotVerifiable", report
    assert f"file file://{source}: unknown op in column Op" in report.json()["error"]


def test_a_table_created_from_a_file_of_timestamps_in_seconds_has_seconds(tmp_path: Path) -> None:
    """pyarrow stores seconds as milliseconds (and reads them back so); ``--schema-from`` gives
    the table the file's seconds, as registering reads the file."""
    import datetime

    seconds = pa.schema([("id", pa.int64()), ("at", pa.timestamp("s", "UTC"))])
    path = tmp_path / "export.parquet"
    pq.write_table(pa.table({"id": [1, 2], "at": pa.array(
        [datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC)] * 2,
        pa.timestamp("s", "UTC"))}, schema=seconds), path)
    url = f"file://{tmp_path}/t"
    created = compactor("table", "create", url, "-k", "id", "--schema-from", path, "--json")
    assert created.code == 0, created
    assert compactor("append", url, "--kind", "upsert", path).code == 0
    assert compactor("compact", url).code == 0
    from compactor import open_table
    from compactor.reader import read_partition

    table = open_table(url)
    assert table.schema.field("at").type == pa.timestamp("s", "UTC")
    assert read_partition(table, table.partition()).sort_by("id").equals(pq.read_table(path)
                                                                         .cast(seconds))


def test_racing_rounds_one_commits_the_other_exits_3(table_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    compactor("table", "create", table_url, "-k", "id", "--order-by", "lsn", "--buckets", "2",
              "--schema", SCHEMA)
    for attempt in range(3):
        data = write_parquet(tmp_path / f"in-{attempt}.parquet",
                             upserts(list(range(2000)), f"r{attempt}", 10_000 * attempt))
        assert compactor("append", table_url, "--kind", "upsert", data).code == 0
        # the first round at its commit waits, so the other, started with it, commits first
        monkeypatch.setenv(ENV, f"commit:sleep-8:{tmp_path}/paused-{attempt}")
        racers = [start("compact", table_url, "--json") for _ in range(2)]
        outcomes = sorted((*p.communicate(timeout=120), p.returncode)[::-1] for p in racers)
        codes = [code for code, _, _ in outcomes]
        if codes == [0, 3]:
            break
        assert codes == [0, 0], outcomes  # one planned after the other committed: retry
    else:
        raise AssertionError("the two rounds never overlapped in three attempts")
    _, loser_err, loser_out = outcomes[1]
    [error] = [line for line in loser_err.splitlines() if line.startswith("error:")]
    assert "another compaction committed" in error and "nothing was committed" in error
    assert "Traceback" not in loser_err
    assert '"error_type": "CommitConflict"' in loser_out
    assert compactor("verify", table_url).code == 0


def test_demo_runs_from_a_fresh_directory_and_reruns(tmp_path: Path) -> None:
    first = compactor("demo", cwd=tmp_path)  # the README's command, as is
    assert first.code == 0, first
    assert "OK partition default" in first.out
    assert re.search(r"files referenced +[1-9]", first.out)  # round 2 rewrote only some
    assert (tmp_path / "demo-table" / "orders").is_dir()

    again = compactor("demo", "--rows", "5000", "--json", cwd=tmp_path)
    assert again.code == 0, again
    result = again.json()
    assert result["verify"]["ok"] and result["verify"]["actual_rows"] > 0
    assert [r["committed"] for r in result["rounds"]] == [True, True]
    assert sum(d["rows"] for d in result["deltas"]) == 5000 + 3 * 500 + 100

    other = tmp_path / "not-a-demo"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = compactor("demo", other)
    assert refused.code == 1 and str(other) in refused.err
    assert (other / "keep.txt").read_text() == "mine"


def test_read_before_any_round_exports_an_empty_state(table_url: str, tmp_path: Path) -> None:
    """``read`` of a table with no compacted state yet exports an empty file with the schema,
    and says that pending deltas are not included."""
    compactor("table", "create", table_url, "-k", "id", "--schema", SCHEMA)
    compactor("append", table_url, "--kind", "upsert",
              write_parquet(tmp_path / "a.parquet", upserts([1], "x", 0)))
    exported = compactor("read", table_url, "--to", tmp_path / "out")
    assert exported.code == 0, exported
    assert "not included" in exported.err
    data = pq.read_table(tmp_path / "out")
    assert data.num_rows == 0 and data.schema.names == ["id", "v", "lsn"]


def _readme_steps_by_hand() -> list[list[str]]:
    """The README's "same steps by hand", as argument lists (continuations joined, comments
    dropped, the leading ``compactor`` removed)."""
    import shlex

    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = text.split("The same steps by hand", 1)[1].split("```bash\n", 1)[1]
    block = block.split("```", 1)[0].replace("\\\n", " ")
    steps = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert steps and all(step[0] == "compactor" for step in steps), steps
    return [step[1:] for step in steps]


def test_the_readmes_steps_by_hand_work_as_written(tmp_path: Path) -> None:
    """Run locally: the S3 URLs become directories, and the Ray round a local one."""
    exports = tmp_path / "exports" / "orders"
    write_parquet(exports / "LOAD0001.parquet",  # a full load, as DMS writes one: no Op
                  {"order_id": [1, 2, 3], "v": ["a", "b", "c"], "lsn": [1, 2, 3]})
    write_parquet(exports / "2024" / "05" / "01" / "20240501-0001.parquet",
                  {"Op": ["U", "D", "I"], "order_id": [1, 2, 4], "v": ["a2", "b", "d"],
                   "lsn": [10, 11, 12]})
    places = {"s3://lake/orders": str(tmp_path / "lake" / "orders"),
              "s3://exports/orders": str(exports)}
    for step in _readme_steps_by_hand():
        args = [next((a.replace(u, p) for u, p in places.items() if a.startswith(u)), a)
                for a in step]
        if "--backend" in args:  # (the Ray cluster the README joins)
            at = args.index("--backend")
            del args[at:at + 4]
        run = compactor(*args, cwd=tmp_path)
        assert run.code == 0, run
    rows = pq.read_table(tmp_path / "exports" / "orders-now").sort_by("order_id")
    assert rows.column("order_id").to_pylist() == [1, 3, 4]
    assert rows.column("v").to_pylist() == ["a2", "c", "d"]


def test_compact_runs_in_the_cpus_and_memory_it_is_given(tmp_path: Path) -> None:
    url = str(tmp_path / "t")
    assert compactor("table", "create", url, "-k", "id", "--order-by", "lsn", "--buckets", "4",
                     "--schema", SCHEMA).code == 0
    for k in range(3):
        ids = list(range(k * 500, k * 500 + 2000))
        assert compactor("append", url, "--kind", "upsert", write_parquet(
            tmp_path / f"{k}.parquet", upserts(ids, f"r{k}", k * 10_000))).code == 0
    budget = ["--cpus", "1", "--memory", "300MiB"]
    plan = compactor("compact", url, *budget, "--dry-run", "--json")
    assert plan.code == 0 and plan.json()["dedupe_actors"] == 1, plan
    done = compactor("compact", url, *budget, "--json")
    assert done.code == 0 and done.json()["rows_out"] == 3000, done
    assert compactor("verify", url).code == 0
    cluster = compactor("compact", url, "--address", "auto", "--cpus", "2")
    assert cluster.code == 2 and "the cluster at --address auto has its own" in cluster.err


def test_the_plan_and_the_round_say_which_small_files_are_merged(table_url: str,
                                                                 tmp_path: Path) -> None:
    import runtime
    from compactor import open_table
    from compactor.compaction import compact_partition
    from compactor.pipeline.small_files import MERGE_FILES

    compactor("table", "create", table_url, "-k", "id", "--order-by", "lsn", "--buckets", "1",
              "--schema", SCHEMA)
    table = open_table(table_url)
    part = table.partition()
    with runtime.init("local", num_cpus=1):  # MERGE_FILES small rounds, in-process (quicker)
        for n in range(MERGE_FILES):
            part.append(pa.table(upserts(list(range(n * 10, n * 10 + 10)), "a", n * 10)))
            compact_partition(table, part)
    last = write_parquet(tmp_path / "last.parquet", upserts([5, 1000], "b", 500))
    assert compactor("append", table_url, "--kind", "upsert", last).code == 0

    plan = compactor("compact", table_url, "--dry-run", "--json")
    assert plan.code == 0, plan
    assert plan.json()["small_files_merged"] == {"0": MERGE_FILES}
    text = compactor("compact", table_url, "--dry-run")
    assert f"{MERGE_FILES} merged into fuller ones, in 1 bucket" in text.out, text
    done = compactor("compact", table_url)
    assert done.code == 0, done
    assert re.search(rf"small files merged\s+{MERGE_FILES} \(rewritten whole", done.out), done
    shown = compactor("show", table_url, "--json").json()
    assert [(b["files"], b["rows"]) for b in shown["partitions"][0]["compacted"]["buckets"]] \
        == [(1, MERGE_FILES * 10 + 1)]
    verified = compactor("verify", table_url)
    assert verified.code == 0, verified


def test_show_tells_the_tables_bucket_count_for_new_partitions_from_a_partitions(
        tmp_path: Path) -> None:
    """A table of 3 buckets whose partition was compacted into 5: the table line says 3 is
    for new partitions (it read '3 buckets' above a partition in 5)."""
    url = str(tmp_path / "t")
    assert compactor("table", "create", url, "-k", "id", "--order-by", "lsn", "--buckets", "3",
                     "--schema", SCHEMA).code == 0
    assert compactor("append", url, "--kind", "upsert", write_parquet(
        tmp_path / "0.parquet", upserts(list(range(50)), "a", 0))).code == 0
    assert compactor("compact", url, "--buckets", "5").code == 0
    shown = compactor("show", url)
    assert shown.code == 0, shown
    assert "new partitions in 3 buckets" in shown.out and "50 rows" in shown.out, shown
    assert "in 5 buckets" in shown.out, shown
