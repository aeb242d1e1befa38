"""compact_partition against an independent oracle (DuckDB), round after round.

Every scenario checks the compacted state row for row against ``tests.oracle.expected_state``
computed from all deltas appended so far. Runs on the local runtime with file:// tables; the
S3 and Ray variants live in test_compaction_backends.py.
"""

from __future__ import annotations

import datetime
import os
import string
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from compactor import CdcOps, DeltaKind, create_table, open_table
from compactor.compaction import compact_partition
from compactor.errors import (
    FileTooLarge,
    InvalidTableSpec,
    MissingColumn,
    NullValue,
    SchemaMismatch,
    TooManyFiles,
    UnknownPartition,
)
from compactor.merge import index_schema
from compactor.pipeline import index_store
from compactor.reader import read_partition
from tests.oracle import assert_tables_equal, expected_state


@pytest.fixture
def rt() -> Iterator[None]:
    with runtime.init("local", num_cpus=2):
        yield


class Scenario:
    """A table plus the list of deltas the oracle replays."""

    def __init__(self, url: str, schema: pa.Schema, key: list[str], order_by: str | None,
                 buckets: int = 4) -> None:
        self.table = create_table(url, schema, primary_key=key, ordering_column=order_by,
                                  bucket_count=buckets)
        self.part = self.table.partition()
        self.key, self.order_by = key, order_by
        self.deltas: list[tuple[str, pa.Table]] = []

    def upsert(self, data: pa.Table) -> None:
        self.part.append(data)
        self.deltas.append(("upsert", data))

    def delete(self, data: pa.Table) -> None:
        self.part.append(data, kind=DeltaKind.DELETE)
        self.deltas.append(("delete", data))

    def cdc(self, data: pa.Table) -> None:
        self.part.append(data, kind=DeltaKind.CDC, cdc=CdcOps("op"))
        self.deltas.append(("cdc", data))

    def compact_and_check(self, **kwargs: object):
        result = compact_partition(self.table, self.part, **kwargs)  # type: ignore[arg-type]
        self.check()
        return result

    def check(self) -> None:
        expected = expected_state(self.deltas, primary_key=self.key, order_by=self.order_by,
                                  op_column="op")
        actual = read_partition(self.table, self.part)
        assert_tables_equal(actual, expected.select(actual.column_names), key=self.key)


SCHEMA = pa.schema([("id", pa.int64()), ("v", pa.string()), ("lsn", pa.int64())])


def _rows(rng: np.random.Generator, n: int, keys: int, lsn0: int, tag: str) -> pa.Table:
    return pa.table({"id": rng.integers(0, keys, n), "v": [f"{tag}-{i}" for i in range(n)],
                     "lsn": np.arange(lsn0, lsn0 + n)}, schema=SCHEMA)


def test_rounds_of_upserts_and_deletes_match_the_oracle(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    rng = np.random.default_rng(1)
    lsn = 0
    for r in range(4):
        for k in range(3):
            s.upsert(_rows(rng, 2000, 5000, lsn, f"r{r}k{k}"))
            lsn += 2000
        s.delete(pa.table({"id": rng.integers(0, 5000, 300), "lsn": np.full(300, lsn)}))
        lsn += 1
        result = s.compact_and_check(target_file_size=30_000)
        assert result.committed and result.position == s.part.version()
        assert result.high_watermark_after == result.position - 1
        assert result.rows_out == read_partition(s.table, s.part).num_rows


def test_an_older_version_reads_with_the_columns_it_had(rt, tmp_path):
    """Not with columns added since (as nulls); bad versions and columns are named."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    s.upsert(_rows(np.random.default_rng(3), 50, 40, 0, "a"))
    first = s.compact_and_check().position
    wider = pa.table({"id": [1, 99], "v": ["b", "c"], "lsn": [100, 101], "extra": [7, 8]})
    s.upsert(wider)
    s.compact_and_check()
    assert read_partition(s.table, s.part, version=first).schema == SCHEMA
    assert read_partition(s.table, s.part).column_names == ["id", "v", "lsn", "extra"]
    newest = s.part.version()
    for bad in (0, -1):
        with pytest.raises(UnknownPartition, match=f"no commit {bad}: commits are numbered "
                                                   f"from 1 \\(the newest is {newest}\\)"):
            read_partition(s.table, s.part, version=bad)
    with pytest.raises(MissingColumn, match=f"no column 'extra' at commit {first} "):
        read_partition(s.table, s.part, version=first, columns=["id", "extra"])


def test_the_newest_state_of_every_partition_reads_with_the_tables_columns(rt, tmp_path):
    """A partition compacted before another added a column reads with it too (null), as the
    newest state; the review found it read without (its own version's columns)."""
    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"],
                         ordering_column="lsn", partition_by=["day"])
    a, b = table.partition({"day": "a"}), table.partition({"day": "b"})
    a.append(_rows(np.random.default_rng(4), 20, 10, 0, "a"))
    done = compact_partition(table, a).position
    b.append(pa.table({"id": [1], "v": ["x"], "lsn": [5], "extra": [7]}))
    compact_partition(table, b)
    for part in (a, b):
        assert read_partition(table, part).column_names == ["id", "v", "lsn", "extra"]
    assert read_partition(table, a, version=done).column_names == ["id", "v", "lsn"]


def test_ordering_column_beats_arrival_order_and_tombstones_hold(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    s.upsert(pa.table({"id": [1, 2, 3], "v": ["new1", "new2", "new3"], "lsn": [10, 10, 10]},
                      schema=SCHEMA))
    s.compact_and_check()
    # arrives later but is older: loses
    s.upsert(pa.table({"id": [1], "v": ["stale"], "lsn": [5]}, schema=SCHEMA))
    s.delete(pa.table({"id": [2], "lsn": [20]}))
    s.compact_and_check()
    # an older version of a deleted key must stay deleted; a newer one brings it back
    s.upsert(pa.table({"id": [2, 3], "v": ["old2", "newer3"], "lsn": [15, 30]}, schema=SCHEMA))
    s.compact_and_check()
    s.upsert(pa.table({"id": [2], "v": ["back"], "lsn": [25]}, schema=SCHEMA))
    s.compact_and_check()
    got = read_partition(s.table, s.part).sort_by("id").to_pylist()
    assert [r["v"] for r in got] == ["new1", "back", "newer3"]


def test_cdc_composite_string_keys_and_added_columns(rt, tmp_path):
    schema = pa.schema([("tenant", pa.string()), ("name", pa.string()), ("n", pa.int32())])
    s = Scenario(f"file://{tmp_path}/t", schema, ["tenant", "name"], None)
    s.cdc(pa.table({"tenant": ["a", "a", "ab", "a"], "name": ["bc", "b", "c", "bc"],
                    "n": [1, 2, 3, 4], "op": ["I", "I", "I", "U"]},
                   schema=schema.append(pa.field("op", pa.string()))))
    s.compact_and_check()
    wider = schema.append(pa.field("note", pa.string()))
    s.cdc(pa.table({"tenant": ["a", "ab", "z"], "name": ["b", "c", "z"], "n": [5, 6, 7],
                    "note": ["x", None, "z"], "op": ["D", "U", "I"]},
                   schema=wider.append(pa.field("op", pa.string()))))
    s.compact_and_check()
    got = read_partition(s.table, s.part).sort_by([("tenant", "ascending"),
                                                   ("name", "ascending")]).to_pylist()
    assert got == [
        {"tenant": "a", "name": "bc", "n": 4, "note": None},
        {"tenant": "ab", "name": "c", "n": 6, "note": None},
        {"tenant": "z", "name": "z", "n": 7, "note": "z"},
    ]


@pytest.mark.parametrize("added", [pa.array(["x", "y"]), pa.array([7, 8], pa.int64())])
def test_a_column_named_as_a_pending_cdc_deltas_op_column_is_null_in_its_rows(
        rt, tmp_path, added: pa.Array) -> None:
    """A later delta adds a table column named as an uncompacted CDC delta's op column: the
    CDC rows' op values are not that column's data (they were read as such, and with another
    type every round of the partition failed)."""
    schema = pa.schema([("id", pa.int64()), ("v", pa.string())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["id"], bucket_count=1)
    part = table.partition()
    part.append(pa.table({"id": [1, 2, 9], "v": ["a", "b", "gone"], "op": ["I", "U", "D"]}),
                kind=DeltaKind.CDC, cdc=CdcOps("op"))
    part.append(pa.table({"id": [3, 4], "v": ["c", "d"], "op": added}))
    for more in ([], [5]):  # and the round after it
        if more:
            part.append(pa.table({"id": more, "v": ["e"], "op": added[:1]}))
        result = compact_partition(table, part)
        assert result.committed
        got = read_partition(table, part).sort_by("id")
        assert got.schema.field("op").type == added.type
        assert got.to_pylist() == [
            {"id": 1, "v": "a", "op": None}, {"id": 2, "v": "b", "op": None},
            {"id": 3, "v": "c", "op": added[0].as_py()},
            {"id": 4, "v": "d", "op": added[1].as_py()},
        ] + [{"id": 5, "v": "e", "op": added[0].as_py()} for _ in more]


def test_a_handle_opened_before_a_column_was_added_keeps_the_columns_data(rt, tmp_path):
    """A table handle (a scheduler's, a CLI's) opened before another writer added a column:
    its round wrote the column as nulls and recorded the newer schema (the values were gone
    from the current state), and its reads left the column out."""
    schema = pa.schema([("id", pa.int64()), ("v", pa.string())])
    url = f"file://{tmp_path}/t"
    create_table(url, schema, primary_key=["id"], bucket_count=2).partition().append(
        pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"]}, schema=schema))
    stale, reader = open_table(url), open_table(url)
    open_table(url).partition().append(pa.table({"id": [2, 4], "v": ["B", "D"],
                                                 "w": pa.array([20, 40], pa.int64())}))
    assert "w" not in stale.schema.names
    assert compact_partition(stale, stale.partition()).committed
    want = [{"id": 1, "v": "a", "w": None}, {"id": 2, "v": "B", "w": 20},
            {"id": 3, "v": "c", "w": None}, {"id": 4, "v": "D", "w": 40}]
    fresh = open_table(url)
    assert read_partition(fresh, fresh.partition()).sort_by("id").to_pylist() == want
    assert "w" not in reader.schema.names
    assert read_partition(reader, reader.partition()).sort_by("id").to_pylist() == want


def test_view_and_dictionary_encoded_inputs_compact_like_plain_ones(rt, tmp_path):
    """A delta may come with string_view / binary_view columns (the table's type is string or
    binary) and a dictionary-encoded CDC op column; rounds that keep only some of its rows
    read them like plain ones."""
    schema = pa.schema([("id", pa.int64()), ("v", pa.string()), ("b", pa.binary()),
                        ("lsn", pa.int64())])
    s = Scenario(f"file://{tmp_path}/t", schema, ["id"], "lsn", buckets=2)
    rng = np.random.default_rng(9)
    for r in range(3):
        n = 500
        ids = rng.integers(0, 300, n)
        plain = pa.table({"id": ids, "v": [f"v{r}-{i}" for i in range(n)],
                          "b": [bytes([r, i % 256]) for i in range(n)],
                          "lsn": np.arange(r * n, (r + 1) * n),
                          "op": rng.choice(["I", "U", "D"], n)})
        encoded = plain.cast(pa.schema([("id", pa.int64()), ("v", pa.string_view()),
                                        ("b", pa.binary_view()), ("lsn", pa.int64()),
                                        ("op", pa.dictionary(pa.int32(), pa.string()))]))
        s.part.append(encoded, kind=DeltaKind.CDC, cdc=CdcOps("op"))
        s.deltas.append(("cdc", plain))  # (the oracle reads plain types)
        s.compact_and_check(target_file_size=4_000)
    assert read_partition(s.table, s.part).schema.field("v").type == pa.string()


def test_files_pyarrow_wrote_from_timestamps_in_seconds_join_a_table_of_seconds(rt, tmp_path):
    """Parquet stores timestamps in seconds as milliseconds (pyarrow reads them back so): a
    file whose stored Arrow schema says seconds is registered into a table of seconds, and
    keys and ordering values from it meet those appended as Arrow; a file without that record
    (DuckDB's, or pyarrow's without the schema) is refused, named."""
    seconds, utc = pa.timestamp("s"), pa.timestamp("s", "UTC")
    schema = pa.schema([("id", seconds), ("v", pa.string()), ("lsn", utc)])
    s = Scenario(f"file://{tmp_path}/t", schema, ["id"], "lsn", buckets=2)
    rng = np.random.default_rng(4)
    for r in range(3):
        n = 400
        data = pa.table({"id": pa.array(rng.integers(0, 300, n) * 86_400, seconds),
                         "v": [f"v{r}-{i}" for i in range(n)],
                         "lsn": pa.array(rng.permutation(n) + r * n, utc)}, schema=schema)
        path = tmp_path / f"written-{r}.parquet"
        pq.write_table(data, path)
        assert pq.read_schema(path).field("id").type == pa.timestamp("ms")
        if r == 1:
            s.upsert(data)  # (as Arrow: stored as compactor writes it)
        else:
            s.part.register([f"file://{path}"])
            s.deltas.append(("upsert", data))
        s.compact_and_check()
    assert read_partition(s.table, s.part).schema == schema
    # a table of milliseconds (as pq.read_schema gives such a file's) takes the file too
    ms = pa.schema([("id", pa.timestamp("ms")), ("v", pa.string()),
                    ("lsn", pa.timestamp("ms", "UTC"))])
    other = create_table(f"file://{tmp_path}/ms", ms, primary_key=["id"],
                         ordering_column="lsn").partition()
    other.register([f"file://{tmp_path}/written-0.parquet"])
    compact_partition(other.table, other)
    assert read_partition(other.table, other).sort_by("id").equals(
        pa.table(expected_state([("upsert", pq.read_table(tmp_path / "written-0.parquet"))],
                                primary_key=["id"], order_by="lsn").sort_by("id"))
        .cast(ms))
    bare = tmp_path / "bare.parquet"
    pq.write_table(data, bare, store_schema=False)
    with pytest.raises(SchemaMismatch, match=r"column 'id' changes type from timestamp\[s\] "
                                             r"\(table\) to timestamp\[ms\]"):
        s.part.register([f"file://{bare}"])


def test_a_column_named_like_a_structs_field_compacts(rt, tmp_path):
    """Integers in order named "a.b" beside a struct "a" with a text field "b": the Parquet
    writer takes an encoding asked for "a.b" for both (a delta encoding of text fails)."""
    n = 1000
    data = pa.table({"id": np.arange(n), "a.b": np.arange(n) * 3,
                     "a": pa.array([{"b": f"x{i}"} for i in range(n)])})
    table = create_table(f"file://{tmp_path}/t", data.schema, primary_key=["id"],
                         bucket_count=1)
    part = table.partition()
    part.append(data)
    assert compact_partition(table, part).committed
    assert read_partition(table, part).sort_by("id").equals(data)


def test_incremental_round_rewrites_only_touched_files(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=8)
    n = 200_000
    s.upsert(pa.table({"id": np.arange(n), "v": np.arange(n).astype(str),
                       "lsn": np.arange(n)}, schema=SCHEMA))
    # (ids and lsns in order take next to nothing delta-encoded, the counting text little:
    # under a byte a row)
    first = s.compact_and_check(target_file_size=5_000)
    assert first.files_written > 8
    hot = np.arange(n - 500, n)  # the newest keys only
    s.upsert(pa.table({"id": hot, "v": ["hot"] * len(hot), "lsn": np.full(len(hot), n)},
                      schema=SCHEMA))
    second = s.compact_and_check(target_file_size=5_000)
    assert second.files_referenced > 0
    assert second.bytes_written < first.bytes_written / 2


def test_nothing_to_do_commits_nothing(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    s.upsert(_rows(np.random.default_rng(0), 10, 10, 0, "x"))
    s.compact_and_check()
    version = s.part.version()
    result = compact_partition(s.table, s.part)
    assert not result.committed and "no pending deltas" in result.message
    assert s.part.version() == version


def test_nothing_to_do_is_said_before_a_runtime_starts(tmp_path):
    """Without a runtime running, a round with nothing to do starts none: here a Ray cluster
    that is not there is never asked (joining it would fail)."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    s.upsert(_rows(np.random.default_rng(0), 10, 10, 0, "x"))
    with runtime.init("local", num_cpus=1):
        s.compact_and_check()
    assert not runtime.is_initialized()
    result = compact_partition(s.table, s.part, backend="ray", address="ray://127.0.0.1:9")
    assert not result.committed and "no pending deltas" in result.message
    assert not runtime.is_initialized()
    with pytest.raises(InvalidTableSpec, match="rebase"):  # still checked first
        compact_partition(s.table, s.part, backend="ray", address="ray://127.0.0.1:9",
                          bucket_count=9)


def test_a_source_file_beyond_32_bit_row_numbers_is_refused_before_any_work(
        rt, tmp_path, monkeypatch):
    from compactor.pipeline import locators

    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    s.upsert(_rows(np.random.default_rng(0), 10, 10, 0, "x"))
    monkeypatch.setattr(locators, "MAX_FILE_ROWS", 9)  # rows are int32: 2**31 - 1 at most
    version = s.part.version()
    with pytest.raises(ValueError, match="has 10 rows; a source file may hold at most 9"):
        compact_partition(s.table, s.part)
    with pytest.raises(FileTooLarge, match=f"partition {s.part.key} of {s.table.url}: "):
        compact_partition(s.table, s.part)
    assert s.part.version() == version


def test_a_bucket_that_would_hold_too_many_files_is_refused_before_anything_is_written(
        rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=1)
    n = 65537  # at one row per file, one file more than a bucket can hold
    # (ids in random order: a row takes bytes, not the bits of ids in order, delta-encoded)
    ids = np.random.default_rng(0).permutation(n)
    s.upsert(pa.table({"id": ids, "v": ["x"] * n, "lsn": np.arange(n)}, schema=SCHEMA))
    version = s.part.version()
    with pytest.raises(TooManyFiles, match=f"partition {s.part.key} of {s.table.url}: bucket 0 "
                                           "would hold 65537 files, more than 65536"):
        compact_partition(s.table, s.part, target_file_size=1)
    assert s.part.version() == version
    assert not [p for p in (tmp_path / "t").rglob("*.parquet") if "compacted" in str(p)]


def test_changing_bucket_count_is_a_rebase(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    rng = np.random.default_rng(2)
    s.upsert(_rows(rng, 3000, 2000, 0, "a"))
    s.compact_and_check()
    s.upsert(_rows(rng, 500, 2000, 3000, "b"))
    with pytest.raises(ValueError, match="rebase"):
        compact_partition(s.table, s.part, bucket_count=7)
    result = s.compact_and_check(bucket_count=7, rebase=True)
    assert result.rebased and result.bucket_count == 7
    assert len(s.part.snapshot().compacted.buckets) == 7  # type: ignore[union-attr]
    s.upsert(_rows(rng, 500, 2000, 3500, "c"))
    s.compact_and_check()


@pytest.mark.parametrize("when", ["in the rebase round", "after the rebase"])
def test_a_rebase_keeps_the_deletes_an_older_row_must_lose_to(rt, tmp_path, when):
    """Deleted keys live on only in the index (tombstones); a rebase builds its index from the
    compacted files, so it carries the old index's tombstones over: a row older than a delete
    arriving with or after the rebase still loses to it, in every new bucket."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=2)
    ids = np.arange(200)
    s.upsert(pa.table({"id": ids, "v": [f"a{i}" for i in ids], "lsn": np.full(200, 10)},
                      schema=SCHEMA))
    s.compact_and_check()
    s.delete(pa.table({"id": ids[::2], "lsn": np.full(100, 20)}))
    s.compact_and_check()
    stale = pa.table({"id": ids, "v": [f"stale{i}" for i in ids], "lsn": np.full(200, 15)},
                     schema=SCHEMA)
    if when == "after the rebase":
        s.upsert(pa.table({"id": [1], "v": ["b1"], "lsn": [30]}, schema=SCHEMA))
        assert s.compact_and_check(bucket_count=5, rebase=True).rebased
        s.upsert(stale)
        s.compact_and_check()
    else:
        s.upsert(stale)
        assert s.compact_and_check(bucket_count=5, rebase=True).rebased
    assert sorted(read_partition(s.table, s.part)["id"].to_pylist()) == ids[1::2].tolist()


@pytest.mark.parametrize("order_by", ["lsn", None])
def test_a_rebase_counts_deletes_and_duplicates_as_an_incremental_round_does(rt, tmp_path,
                                                                           order_by):
    """A rebase re-hashes the compacted rows as records; those are the keys that were there,
    not incoming duplicates: a delete of one counts as applied (it counted as a dropped
    duplicate), and tombstones carried over count as neither."""
    results = []
    for name, rebase in (("incremental", False), ("rebase", True)):
        s = Scenario(f"file://{tmp_path}/{name}", SCHEMA, ["id"], order_by, buckets=3)
        ids = np.arange(300)
        s.upsert(pa.table({"id": ids, "v": [f"a{i}" for i in ids], "lsn": np.full(300, 10)},
                          schema=SCHEMA))
        s.compact_and_check()
        s.delete(pa.table({"id": ids[:20], "lsn": np.full(20, 20)}))  # tombstones (lsn)
        s.compact_and_check()
        s.delete(pa.table({"id": np.r_[ids[100:130], [5000, 5001]], "lsn": np.full(32, 30)}))
        for v in ("b", "c"):  # 40 keys updated twice: 40 versions dropped
            s.upsert(pa.table({"id": ids[200:240], "v": [f"{v}{i}" for i in range(40)],
                               "lsn": np.full(40, 40 if v == "b" else 50)}, schema=SCHEMA))
        s.upsert(pa.table({"id": [7000, 7000], "v": ["n", "m"], "lsn": [60, 61]},
                          schema=SCHEMA))
        results.append(s.compact_and_check(**({"bucket_count": 5, "rebase": True} if rebase
                                              else {})))
    incremental, rebased = results
    assert rebased.rebased and not incremental.rebased
    assert (rebased.deletes_applied, rebased.duplicates_dropped, rebased.rows_out) == \
        (incremental.deletes_applied, incremental.duplicates_dropped, incremental.rows_out) == \
        (30, 41, 300 - 20 - 30 + 1)


@pytest.mark.timeout(120)
def test_tasks_fit_beside_the_rounds_actors_in_a_small_memory_budget(tmp_path):
    """Each task's memory request is what it needs (a bucket it writes a few rows of buffers
    only those rows), capped at what the round's dedupe actors leave of the budget: asking for
    more than could ever be free would wait for ever. Here 64 buckets of wide rows, in 2 GiB;
    then a rebase of one-row files to 256 buckets."""
    schema = pa.schema([("id", pa.int64()), ("v", pa.string()), ("lsn", pa.int64())])
    s = Scenario(f"file://{tmp_path}/t", schema, ["id"], "lsn", buckets=64)
    s.upsert(pa.table({"id": np.arange(2000), "v": [f"{i:0400d}" for i in range(2000)],
                       "lsn": np.zeros(2000, dtype=np.int64)}, schema=schema))
    with runtime.init("local", num_cpus=2, memory=2 << 30):
        s.compact_and_check()
        for i in range(20):
            s.upsert(pa.table({"id": [i], "v": ["x"], "lsn": [1]}, schema=schema))
        s.compact_and_check(target_file_size=100)
        assert s.compact_and_check(bucket_count=256, rebase=True).rebased


def test_index_is_recovered_from_storage_by_a_new_runtime(tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    rng = np.random.default_rng(3)
    s.upsert(_rows(rng, 3000, 1000, 0, "a"))
    with runtime.init("local", num_cpus=2):
        s.compact_and_check()
    s.upsert(_rows(rng, 3000, 1000, 3000, "b"))
    with runtime.init("local", num_cpus=2):
        s.compact_and_check()


def test_lost_index_files_are_rebuilt_from_data(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    rng = np.random.default_rng(4)
    s.upsert(_rows(rng, 3000, 1000, 0, "a"))
    s.compact_and_check()
    for chain in index_store.paths_of(s.part.snapshot().compacted) or []:
        for rel in chain:
            os.remove(s.table.storage.path(rel))
    s.upsert(_rows(rng, 3000, 1000, 3000, "b"))
    runtime.shutdown()  # a new process: the actors' cached indexes are gone too
    runtime.init("local", num_cpus=2)
    result = s.compact_and_check()
    assert result.rebased  # rebuilt from the compacted files, not from a lost index
    # and the result says so, naming a file it missed; its deletes are lost with it
    assert result.message.startswith("the index was rebuilt from the compacted files (index "
                                     f"file file://{tmp_path}/t/partitions/"), result.message
    assert "No such file or directory" in result.message
    assert "the deletes remembered by the index being rebuilt are lost with it" in \
        result.message


@pytest.mark.parametrize("damage", ["two keys at one row", "a key at a row beyond its file"])
def test_a_corrupt_index_is_refused_and_the_round_rebuilds_it_from_data(rt, tmp_path,
                                                                         damage):
    """A persisted index whose entries are not one per row of their files (here: one key's
    entry rewritten to point at another key's row, or past its file's end) is caught when a
    round rewrites that file; the round commits nothing and runs again from the compacted
    files (``rebased``), and the result still matches the oracle."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    rng = np.random.default_rng(6)
    s.upsert(_rows(rng, 3000, 1000, 0, "a"))
    s.compact_and_check()
    chain = index_store.paths_of(s.part.snapshot().compacted)[0]  # type: ignore[index]
    assert len(chain) == 1
    index = index_store.read(s.table.storage, chain, index_schema(pa.int64()))
    rows = index.column("row").to_numpy().copy()
    files = index.column("file").to_numpy()
    same = np.flatnonzero(files == files[0])
    rows[same[0]] = rows[same[1]] if damage == "two keys at one row" else 10**6
    index_store.write(s.table.storage, chain[0], index.set_column(
        index.schema.get_field_index("row"), "row", pa.array(rows, pa.int32())))
    runtime.shutdown()  # a new process: the actors reload the damaged index
    runtime.init("local", num_cpus=2)
    s.upsert(_rows(rng, 3000, 1000, 3000, "b"))  # every key again: every file is rewritten
    result = s.compact_and_check()
    assert result.rebased


@pytest.mark.parametrize("column", ["hi", "row"])
def test_a_flipped_bit_in_an_index_file_is_found_and_the_index_rebuilt(rt, tmp_path, column):
    """Damage that still reads as Arrow: one bit of a key's digest (its entry then names
    another key, and the round wrote the key twice) or of a row number, flipped in the file's
    bytes; the round finds it by the sums written with the file and rebuilds the index."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=1)
    s.upsert(pa.table({"id": range(500), "v": ["a"] * 500, "lsn": [1] * 500}, schema=SCHEMA))
    s.compact_and_check()
    (chain,) = index_store.paths_of(s.part.snapshot().compacted)  # type: ignore[misc]
    path = s.table.storage.path(chain[0])
    index = index_store.read(s.table.storage, chain, index_schema(pa.int64()))
    k = 123
    value = index.column(column).to_numpy()[k]
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    at = raw.find(value.tobytes())
    assert at > 0 and (column == "row" or raw.find(value.tobytes(), at + 1) < 0)
    raw[at] ^= 1 << 3
    with open(path, "wb") as f:
        f.write(bytes(raw))
    runtime.shutdown()  # a new process: the actors reload the damaged index
    runtime.init("local", num_cpus=2)
    ids = pa.array(np.arange(500))
    s.upsert(pa.table({"id": ids, "v": ["b"] * 500, "lsn": [2] * 500}, schema=SCHEMA))
    result = s.compact_and_check()  # (the oracle: every key once, each its newest row)
    assert result.rebased and "do not hold what was written (damaged)" in result.message


def test_changed_delta_file_fails_cleanly_and_commits_nothing(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    data = _rows(np.random.default_rng(5), 100, 50, 0, "a")
    src = tmp_path / "src.parquet"
    pq.write_table(data, src)
    s.part.register([f"file://{src}"])
    pq.write_table(data.slice(0, 10), src)  # changed after registration
    version = s.part.version()
    from compactor import CompactorError

    with pytest.raises(CompactorError, match=r"src\.parquet"):
        compact_partition(s.table, s.part)
    assert s.part.version() == version
    assert s.part.snapshot().compacted is None


keys = st.integers(0, 30)
ops = st.sampled_from(["I", "U", "D"])


@st.composite
def delta_lists(draw: st.DrawFn) -> list[list[tuple[int, str, int, str]]]:
    rounds = draw(st.lists(st.lists(st.tuples(keys, ops, st.integers(0, 50),
                                              st.sampled_from(list(string.ascii_lowercase))),
                                    min_size=0, max_size=25), min_size=1, max_size=4))
    return rounds


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(rounds=delta_lists(), order=st.booleans())
def test_random_cdc_streams_match_the_oracle(rt, tmp_path_factory, rounds, order):
    schema = pa.schema([("id", pa.int64()), ("v", pa.string()), ("ts", pa.int64())])
    s = Scenario(f"file://{tmp_path_factory.mktemp('h')}/t", schema, ["id"],
                 "ts" if order else None, buckets=3)
    op_schema = schema.append(pa.field("op", pa.string()))
    for rnd in rounds:
        for chunk in (rnd[: len(rnd) // 2], rnd[len(rnd) // 2:]):
            if chunk:
                s.cdc(pa.table({"id": [r[0] for r in chunk], "v": [r[3] for r in chunk],
                                "ts": [r[2] for r in chunk], "op": [r[1] for r in chunk]},
                               schema=op_schema))
        if s.deltas:
            compact_partition(s.table, s.part, target_file_size=500)
            s.check()


@pytest.mark.parametrize(("order_by", "buckets"), [(None, 2), ("lsn", 2), (None, 6)])
def test_index_delta_chains_are_folded_by_a_new_runtime(tmp_path, order_by, buckets):
    """With 6 buckets each of the 2 actors holds 3: the new keys of all its buckets are
    appended behind its sorted entries, and each bucket's delta must get its own."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], order_by, buckets=buckets)
    rng = np.random.default_rng(8)
    s.upsert(pa.table({"id": np.arange(5000), "v": ["base"] * 5000,
                       "lsn": np.arange(5000)}, schema=SCHEMA))
    lsn = 5000

    def recent_changes(tag: str) -> None:
        nonlocal lsn
        ids = rng.integers(4900, 5200, 100)  # updates of the newest keys, some new keys
        s.upsert(pa.table({"id": ids, "v": [tag] * 100, "lsn": np.arange(lsn, lsn + 100)},
                          schema=SCHEMA))
        s.delete(pa.table({"id": rng.integers(4900, 5300, 20), "lsn": np.full(20, lsn + 100)}))
        lsn += 101

    with runtime.init("local", num_cpus=2):
        for r in range(4):
            recent_changes(f"u{r}")
            s.compact_and_check(target_file_size=2000)
    chains = index_store.paths_of(s.part.snapshot().compacted) or []
    assert max(len(c) for c in chains) > 1  # rounds wrote deltas, not whole indexes
    with runtime.init("local", num_cpus=2):  # new actors fold the chains from storage
        for r in range(2):
            recent_changes(f"v{r}")
            assert not s.compact_and_check(target_file_size=2000).rebased


def test_a_progress_callback_failing_after_the_commit_deletes_nothing(rt, tmp_path):
    """The round is committed before its last progress report: an error there must not clean
    up (delete) the files the committed state names."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    rng = np.random.default_rng(3)
    for r in range(2):
        s.upsert(_rows(rng, 300, 200, 1000 * r, f"r{r}"))

        def progress(step: str, done: int, total: int, *rest: object) -> None:
            if step == "commit" and done == total:
                raise RuntimeError("the progress display broke")

        with pytest.raises(RuntimeError, match="the progress display broke"):
            compact_partition(s.table, s.part, progress=progress)
        s.check()  # committed, every file it names still there


@pytest.mark.timeout(120)
def test_a_partitions_actors_make_room_in_a_small_budget_by_stopping_older_ones(tmp_path):
    """Warm partitions' dedupe actors keep their memory; a new partition's actors that would
    not fit beside them (and a share for tasks) stop the least recently used ones first,
    instead of waiting for ever for memory nobody gives back."""
    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"],
                         partition_by=["day"], bucket_count=2)
    rng = np.random.default_rng(10)
    parts = [table.partition({"day": f"d{i}"}) for i in range(4)]
    with runtime.init("local", num_cpus=2, memory=300 << 20):
        for p in parts:
            data = _rows(rng, 300, 100, 0, "x")
            p.append(data)
            compact_partition(table, p)
            assert read_partition(table, p).num_rows == len(set(data["id"].to_pylist()))
        with pytest.raises(ValueError):
            runtime.get_actor(f"dedupe:{table.metadata.table_id}:{parts[0].key}:2:2:0")


@pytest.mark.timeout(120)
def test_actors_of_a_partition_being_compacted_are_stopped_last(tmp_path):
    """Making room, a partition another round of this process is compacting keeps its actors
    while an idle one, though used more recently, gives way."""
    import threading

    from compactor import compaction

    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"],
                         partition_by=["day"], bucket_count=2)
    rng = np.random.default_rng(11)
    busy, idle, new = (table.partition({"day": d}) for d in ("a", "b", "c"))

    def alive(p) -> bool:  # type: ignore[no-untyped-def]
        try:
            runtime.get_actor(f"dedupe:{table.metadata.table_id}:{p.key}:2:2:0")
            return True
        except ValueError:
            return False

    with runtime.init("local", num_cpus=2, memory=450 << 20):  # room for two partitions' actors
        for p in (busy, idle, new):
            p.append(_rows(rng, 300, 100, 0, "x"))
        compact_partition(table, busy)
        compact_partition(table, idle)
        lock = compaction._round_locks.setdefault(compaction._round_key(table, busy),
                                                  threading.Lock())
        with lock:  # as if a round of ``busy`` were running in another thread
            compact_partition(table, new)
        assert alive(busy) and alive(new) and not alive(idle)


def test_only_recent_partitions_keep_their_dedupe_actors(rt, tmp_path):
    from compactor.compaction import KEEP_WARM

    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"],
                         partition_by=["day"], bucket_count=2)
    rng = np.random.default_rng(9)
    parts = [table.partition({"day": f"d{i}"}) for i in range(KEEP_WARM + 1)]
    for p in parts:
        p.append(_rows(rng, 100, 100, 0, "x"))
        compact_partition(table, p)
    groups = int(runtime.cluster_resources()["CPU"])

    def alive(p: object) -> bool:
        try:
            runtime.get_actor(f"dedupe:{table.metadata.table_id}:{p.key}:2:{groups}:0")  # type: ignore[attr-defined]
            return True
        except ValueError:
            return False

    assert not alive(parts[0])
    assert all(alive(p) for p in parts[1:])


def test_memory_tables_are_refused_with_a_reason():
    from compactor import InvalidTableSpec

    t = create_table("memory://compaction-refused/t", SCHEMA, primary_key=["id"])
    t.partition().append(_rows(np.random.default_rng(0), 10, 10, 0, "x"))
    with pytest.raises(InvalidTableSpec, match="worker processes"):
        compact_partition(t, t.partition())



def _codecs(state_files) -> set[str]:
    codecs = set()
    for f in state_files:
        meta = pq.ParquetFile(f.url.removeprefix("file://")).metadata
        codecs |= {meta.row_group(g).column(c).compression
                   for g in range(meta.num_row_groups) for c in range(meta.num_columns)}
    return codecs


def test_files_are_written_with_the_codec_asked_for(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=2)
    rng = np.random.default_rng(5)
    s.upsert(_rows(rng, 2000, 1500, 0, "a"))
    s.compact_and_check()
    assert _codecs(s.part.snapshot().compacted.files) == {"ZSTD"}
    s.upsert(_rows(rng, 500, 1500, 2000, "b"))
    s.compact_and_check(compression="lz4")
    state = s.part.snapshot().compacted
    written = [f for f in state.files if "LZ4" in _codecs([f])]
    assert written and _codecs(state.files) <= {"ZSTD", "LZ4", "LZ4_RAW"}

    version = s.part.version()
    s.upsert(_rows(rng, 10, 1500, 3000, "c"))
    with pytest.raises(InvalidTableSpec, match="compression 'lzo' is not one of zstd, lz4") as bad:
        compact_partition(s.table, s.part, compression="lzo")
    assert str(bad.value).startswith(f"partition {s.part.key} of {s.table.url}: ")
    for count in (99_999, 0, -3):
        with pytest.raises(InvalidTableSpec, match=rf"bucket count {count} must be between 1 "
                                                   r"and 16384") as bad_count:
            compact_partition(s.table, s.part, bucket_count=count)
        assert str(bad_count.value).startswith(f"partition {s.part.key} of {s.table.url}: ")
    assert s.part.version() == version + 1  # the append only: nothing compacted


def test_a_column_of_arrow_type_null_fits_any_column_and_adds_none(rt, tmp_path):
    """All-null columns without a type (pandas, JSON): as values of an existing column (the
    ordering column too), and as a column the table lacks, which a later typed file adds. The
    table's type of such a column had become ``null``, and every typed value was refused."""
    schema = pa.schema([("id", pa.int64()), ("v", pa.string()), ("lsn", pa.int64())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["id"],
                         ordering_column="lsn", bucket_count=2)
    part = table.partition()
    part.append(pa.table({"id": [1, 2], "v": ["a", "b"], "lsn": [1, 1]}, schema=schema))
    part.append(pa.table({"id": [2, 3], "v": pa.nulls(2), "lsn": [2, 2], "note": pa.nulls(2)}))
    assert table.refresh().schema == schema
    assert compact_partition(table, part).committed
    part.append(pa.table({"id": [4], "v": ["d"], "lsn": pa.nulls(1), "note": ["n"]}))
    assert table.refresh().schema == schema.append(pa.field("note", pa.string()))
    assert compact_partition(table, part).committed
    assert read_partition(table, part).sort_by("id").to_pylist() == [
        {"id": 1, "v": "a", "lsn": 1, "note": None}, {"id": 2, "v": None, "lsn": 2, "note": None},
        {"id": 3, "v": None, "lsn": 2, "note": None}, {"id": 4, "v": "d", "lsn": None,
                                                        "note": "n"}]
    strict = create_table(f"file://{tmp_path}/s", pa.schema(
        [("id", pa.int64()), pa.field("v", pa.string(), nullable=False)]), primary_key=["id"])
    with pytest.raises(NullValue, match="'v'"):
        strict.partition().append(pa.table({"id": [1], "v": pa.nulls(1)}))


def test_buckets_touched_counts_buckets_whose_files_changed(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=4)
    s.upsert(pa.table({"id": range(200), "v": ["a"] * 200, "lsn": [1] * 200}, schema=SCHEMA))
    assert s.compact_and_check().buckets_touched == 4
    s.upsert(pa.table({"id": [7], "v": ["b"], "lsn": [2]}, schema=SCHEMA))
    assert s.compact_and_check().buckets_touched == 1
    s.delete(pa.table({"id": range(200), "lsn": [3] * 200}))
    result = s.compact_and_check()  # every file goes, none is written
    assert (result.rows_out, result.files_written, result.buckets_touched) == (0, 0, 4)


@runtime.remote
def _nothing(i: int) -> int:
    return i


def test_a_step_of_thousands_of_tasks_is_gathered_in_batches(rt, monkeypatch):
    """Each wait looks at every pending ref: a step of N tasks gathered one completion at a
    time cost N**2 (a rebase from 8,192 buckets: 33 s in its hash step). Counted, not timed:
    the waits stay far fewer than the tasks, and every result comes back in order."""
    from compactor import compaction

    waits = [0]
    wait = runtime.wait

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        waits[0] += 1
        return wait(*args, **kwargs)

    monkeypatch.setattr(compaction.runtime, "wait", counting)
    reported = []
    refs = [_nothing.remote(i) for i in range(3000)]
    got = compaction._gather(refs, "step", lambda *a: reported.append(a[1]))
    assert got == list(range(3000))
    assert reported[-1] == 3000 and reported == sorted(reported)
    assert waits[0] < 1000, waits


def test_hundreds_of_tiny_deltas_of_every_kind_match_the_oracle(rt, tmp_path):
    """Small files share hash tasks, whose records travel as one run per task with their own
    positions and files (``hash_bucket.combined``), and materialize cuts many of them into
    several tasks: keys repeat within and across files, ordering values tie, deletes and CDC
    ops mix; a second round folds more of them into the index in place."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=3)
    rng = np.random.default_rng(21)
    for count in (300, 100):
        for k in range(count):
            n = int(rng.integers(1, 12))
            ids = rng.integers(0, 400, n)
            lsn = rng.integers(0, 50, n)  # ties, and older than rows already folded in
            kind = rng.choice(["upsert", "delete", "cdc"], p=[0.6, 0.15, 0.25])
            if kind == "delete":
                s.delete(pa.table({"id": ids, "lsn": lsn}))
            elif kind == "upsert":
                s.upsert(pa.table({"id": ids, "v": [f"{count}-{k}-{i}" for i in range(n)],
                                   "lsn": lsn}, schema=SCHEMA))
            else:
                s.cdc(pa.table({"id": ids, "v": [f"c{count}-{k}-{i}" for i in range(n)],
                                "lsn": lsn, "op": rng.choice(["I", "U", "D"], n)}))
        result = s.compact_and_check()
        assert result.files_read > count  # each hashed; those with rows left, materialized


def test_date64_and_time_in_seconds_are_stored_as_parquet_holds_them(rt, tmp_path):
    """pyarrow writes date64 as days and time32[s] as milliseconds, and reads them back so: a
    table created from such a schema stores date32 and time32[ms], so the files pyarrow wrote
    from that schema register (they were refused: 'changes type from date64[ms] (table) to
    date32[day]'), beside the same data appended as Arrow; a date64 key and ordering column
    included."""
    day = 86_400_000
    schema = pa.schema([("id", pa.date64()), ("t", pa.time32("s")), ("lsn", pa.date64()),
                        ("v", pa.string())])
    stored = pa.schema([("id", pa.date32()), ("t", pa.time32("ms")), ("lsn", pa.date32()),
                        ("v", pa.string())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["id"],
                         ordering_column="lsn", bucket_count=2)
    assert table.schema == stored
    part = table.partition()
    rng = np.random.default_rng(6)
    deltas = []
    for r in range(3):
        n = 300
        data = pa.table({"id": pa.array(rng.integers(0, 200, n) * day, pa.date64()),
                         "t": pa.array(rng.integers(0, 86_400, n).astype(np.int32), pa.time32("s")),
                         "lsn": pa.array((rng.permutation(n) + r * n) * day, pa.date64()),
                         "v": [f"v{r}-{i}" for i in range(n)]}, schema=schema)
        if r == 1:
            part.append(data)
        else:
            path = tmp_path / f"written-{r}.parquet"
            pq.write_table(data, path)
            part.register([f"file://{path}"])
        deltas.append(("upsert", data.cast(stored)))
        assert compact_partition(table, part, target_file_size=1).committed
        actual = read_partition(table, part)
        assert actual.schema == stored
        assert_tables_equal(actual, expected_state(deltas, primary_key=["id"], order_by="lsn"),
                            key="id")
    # a date64 with a time of day (not a date, by Arrow's rules; pyarrow's writer would drop
    # it) is refused, naming the row and the value
    late = data.slice(0, 3).set_column(0, "id", pa.array([0, day, day + 3_600_000],
                                                         pa.date64()))
    with pytest.raises(SchemaMismatch, match=r"column 'id' \(date64\) holds a time of day at "
                                             r"row 2 \(1970-01-02 01:00:00\)"):
        part.append(late)


def test_nested_date64_with_a_time_of_day_is_refused_naming_the_row_and_its_value(tmp_path):
    """A date64 inside a struct, a list or a map is stored as date32 too: one with a time of
    day is refused naming the column, the row (counted across the column's chunks) and the
    row's value with its times of day, not as a cast that 'would lose data: 90000000'; whole
    days at depth are taken, and read back as date32."""
    day = 86_400_000
    struct, items = pa.struct([("d", pa.date64())]), pa.list_(pa.date64())
    entries = pa.map_(pa.string(), pa.date64())
    schema = pa.schema([("id", pa.int64()), ("s", struct), ("l", items), ("m", entries)])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["id"])
    part = table.partition()

    def rows(s: list, lists: list, maps: list, chunks: int = 1) -> pa.Table:
        data = pa.table({"id": range(len(s)), "s": pa.array(s, struct),
                         "l": pa.array(lists, items), "m": pa.array(maps, entries)})
        return pa.concat_tables([data.slice(i, 1) for i in range(len(s))]) if chunks > 1 \
            else data

    whole = rows([{"d": day}, None, {"d": 0}], [[day, 0], None, []], [[("a", day)], None, []])
    bad = [
        (rows([{"d": day}, None, {"d": day + 3_600_000}], [[0]] * 3, [[]] * 3, chunks=3),
         r"column 's' \(struct<d: date64\[ms\]>\) holds a date64 with a time of day at row 2 "
         r"\(\{'d': datetime.datetime\(1970, 1, 2, 1, 0\)\}\)"),
        (rows([None] * 4, [[0], None, [day], [0, day, 1_000]], [[]] * 4),
         r"column 'l' \(list<item: date64\[ms\]>\) holds a date64 with a time of day at row 3 "
         r"\(\[datetime.datetime\(1970, 1, 1, 0, 0\), datetime.datetime\(1970, 1, 2, 0, 0\), "
         r"datetime.datetime\(1970, 1, 1, 0, 0, 1\)\]\)"),
        (rows([None] * 2, [[]] * 2, [[("a", day)], [("b", 2 * day + 60_000)]]),
         r"column 'm' \(map<string, date64\[ms\]>\) holds a date64 with a time of day at row 1 "
         r"\(\[\('b', datetime.datetime\(1970, 1, 3, 0, 1\)\)\]\)"),
    ]
    for data, message in bad:
        with pytest.raises(SchemaMismatch, match=message + r"; a table stores dates as whole "
                                                           "days: .*nothing was committed"):
            part.append(data)
    assert part.version() == 0  # nothing was committed
    part.append(whole)
    with runtime.init("local", num_cpus=1):
        assert compact_partition(table, part).committed
    actual = read_partition(table, part).sort_by("id")
    assert actual.schema.field("s").type == pa.struct([("d", pa.date32())])
    assert actual.schema.field("l").type.value_type == pa.date32()
    assert actual.schema.field("m").type.item_type == pa.date32()
    assert actual.column("l").to_pylist() == whole.column("l").cast(
        pa.list_(pa.date32())).to_pylist()
    assert actual.column("s").to_pylist() == [{"d": datetime.date(1970, 1, 2)}, None,
                                              {"d": datetime.date(1970, 1, 1)}]


def test_a_date64_with_a_time_of_day_under_a_list_view_is_refused(tmp_path):
    """A list view keeps its type (no cast to date32 refuses the time of day), and the writer
    dropped it silently (found by helper 52)."""
    day = 86_400_000
    dates, structs = pa.list_view(pa.date64()), pa.list_view(pa.struct([("d", pa.date64())]))
    table = create_table(f"file://{tmp_path}/t", pa.schema([("id", pa.int64()), ("l", dates),
                                                            ("s", structs)]),
                         primary_key=["id"])
    part = table.partition()

    def rows(lists: list, nested: list) -> pa.Table:
        return pa.table({"id": range(3), "l": pa.array(lists, dates),
                         "s": pa.array(nested, structs)})

    with pytest.raises(SchemaMismatch, match=r"column 'l' \(list_view<item: date64\[ms\]>\) "
                                             r"holds a date64 with a time of day at row 2; "):
        part.append(rows([[day], None, [0, day + 3_600_000]], [[{"d": 0}]] * 3))
    with pytest.raises(SchemaMismatch, match=r"column 's' .* holds a date64 with a time of day "
                                             r"at row 1; a table stores dates as whole days"):
        part.append(rows([[day]] * 3, [[{"d": 0}], [{"d": 5}], None]))
    assert part.version() == 0
    part.append(rows([[day], None, []], [[{"d": day}], None, [None]]))
    assert part.version() == 1


@pytest.mark.parametrize("table_unit", ["s", "ms"])
def test_nested_timestamps_in_seconds_take_pyarrows_files_and_fit_milliseconds(
        rt, tmp_path, table_unit):
    """Timestamps in seconds inside a list, a struct and a map, as at the top level: a file
    pyarrow wrote from them (Parquet holds milliseconds; pyarrow reads nested ones back so) is
    taken by a table of seconds (it was refused: 'changes type from list<item: timestamp[s]>
    (table) to list<element: timestamp[ms]>'), and seconds appended into a table of
    milliseconds fit it at any depth (refused too); rounds against the oracle."""
    def schema(unit: str) -> pa.Schema:
        ts, zoned = pa.timestamp(unit), pa.timestamp(unit, "UTC")
        return pa.schema([("id", pa.int64()), ("lsn", pa.int64()), ("top", ts),
                          ("l", pa.list_(ts)), ("s", pa.struct([("t", zoned), ("n", pa.int32())])),
                          ("m", pa.map_(pa.string(), ts))])

    table = create_table(f"file://{tmp_path}/t", schema(table_unit), primary_key=["id"],
                         ordering_column="lsn", bucket_count=2)
    part = table.partition()
    rng = np.random.default_rng(8)
    deltas = []
    for r in range(3):
        n = 400
        seconds = rng.integers(0, 2_000_000_000, (n, 3))
        data = pa.table({
            "id": rng.integers(0, 300, n), "lsn": rng.permutation(n) + r * n,
            "top": pa.array(seconds[:, 0], pa.timestamp("s")),
            "l": pa.array([None if i % 9 == 0 else [int(v) for v in seconds[i, :i % 3]]
                           for i in range(n)], pa.list_(pa.timestamp("s"))),
            "s": pa.array([{"t": int(seconds[i, 1]), "n": i} for i in range(n)],
                          pa.struct([("t", pa.timestamp("s", "UTC")), ("n", pa.int32())])),
            "m": pa.array([[("a", int(seconds[i, 2]))] for i in range(n)],
                          pa.map_(pa.string(), pa.timestamp("s")))}, schema=schema("s"))
        if r == 1:
            part.append(data)
        else:
            path = tmp_path / f"written-{r}.parquet"
            pq.write_table(data, path, row_group_size=150)
            part.register([f"file://{path}"])
        deltas.append(("upsert", data.cast(schema(table_unit))))
        assert compact_partition(table, part, target_file_size=1).committed
        actual = read_partition(table, part)
        assert actual.schema == schema(table_unit)
        assert_tables_equal(actual, expected_state(deltas, primary_key=["id"], order_by="lsn"),
                            key="id")
