"""Tables: create and open, key types, metadata, partitions and their escaping, listing."""

from __future__ import annotations

import datetime as dt
import pickle
from typing import Any

import pyarrow as pa
import pytest

from compactor import (
    InvalidPartition,
    InvalidTableSpec,
    TableExists,
    TableNotFound,
    create_table,
    list_tables,
    open_table,
)
from compactor.hashing import HASH_ID
from tests.compactor._storage import SCHEMA, export_url, files_under, new_table, write_parquet


def test_create_then_open_keeps_every_setting(table_root: str) -> None:
    schema = pa.schema([("id", pa.int64()), ("lsn", pa.int64()), ("v", pa.string())])
    create_table(table_root, schema, primary_key=["id"], ordering_column="lsn",
                 partition_by=["day", "region"], bucket_count=7, checkpoint_interval=50)
    table = open_table(table_root)
    assert table.schema == schema
    assert table.primary_key == ("id",)
    assert table.ordering_column == "lsn"
    assert table.partition_by == ("day", "region")
    assert table.bucket_count == 7
    assert table.hash_algorithm == HASH_ID
    assert table.metadata.checkpoint_interval == 50
    assert table.metadata.version == 1


def test_creating_an_existing_table_fails(table_root: str) -> None:
    new_table(table_root)
    with pytest.raises(TableExists, match=f"already exists at {table_root}"):
        new_table(table_root)


def test_opening_a_missing_table_fails(table_root: str) -> None:
    with pytest.raises(TableNotFound, match=f"no table at {table_root}"):
        open_table(table_root)


def test_opening_a_root_that_is_not_a_table_fails(table_root: str) -> None:
    write_parquet(f"{table_root}/some.parquet", {"a": [1]})
    with pytest.raises(TableNotFound, match="no table at"):
        open_table(table_root)


@pytest.mark.parametrize(
    ("columns", "key", "match"),
    [
        ([("id", pa.int64())], ["nope"], "primary key column 'nope' is not in the schema"),
        ([("id", pa.float64())], ["id"], "'id' has type double; keys must be"),
        ([("id", pa.list_(pa.int8()))], ["id"], "'id' has type list"),
        ([("id", pa.int64())], [], "at least one primary key column"),
        ([("id", pa.int64())], ["id", "id"], "repeats a column"),
    ],
)
def test_invalid_table_definitions(table_root: str, columns: list[tuple[str, pa.DataType]],
                                   key: list[str], match: str) -> None:
    with pytest.raises(InvalidTableSpec, match=match):
        create_table(table_root, pa.schema(columns), primary_key=key)
    with pytest.raises(TableNotFound):
        open_table(table_root)


def test_invalid_ordering_partition_and_bucket_settings(table_root: str) -> None:
    with pytest.raises(InvalidTableSpec, match="ordering column 'lsn' is not in the schema"):
        new_table(table_root, ordering_column="lsn")
    with pytest.raises(InvalidTableSpec, match="ordering column 'v' has type list<item: int8>"):
        new_table(table_root, pa.schema([("id", pa.int64()), ("v", pa.list_(pa.int8()))]),
                  ordering_column="v")
    with pytest.raises(InvalidTableSpec, match="must be distinct"):
        new_table(table_root, partition_by=["d", "d"])
    with pytest.raises(InvalidTableSpec, match="at least 1"):
        new_table(table_root, bucket_count=0)
    # more buckets than a round can compact into (compacted files' ordinals) was taken, and
    # the second round failed: 'IndexError: index 1 is out of bounds for axis 0 with size 1'
    with pytest.raises(InvalidTableSpec, match="bucket_count 16385 is more than the 16384 a "
                                               "partition can be compacted into"):
        new_table(table_root, bucket_count=16385)
    assert new_table(table_root, bucket_count=16384).bucket_count == 16384


KEY_TYPES: dict[str, tuple[list[tuple[str, pa.DataType]], list[list[Any]]]] = {
    # key fields, then one column of two values per key field
    "int": ([("k", pa.int32())], [[1, 2]]),
    "string": ([("k", pa.string())], [["a", "b"]]),
    "binary": ([("k", pa.binary())], [[b"\x00", b"\xff"]]),
    "date": ([("k", pa.date32())], [[dt.date(2024, 1, 1), dt.date(2024, 1, 2)]]),
    "timestamp": ([("k", pa.timestamp("us", tz="UTC"))],
                  [[dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                    dt.datetime(2024, 1, 2, tzinfo=dt.UTC)]]),
    "composite": ([("k", pa.string()), ("k2", pa.int64()), ("k3", pa.date32())],
                  [["a", "a"], [1, 2], [dt.date(2024, 1, 1)] * 2]),
}


@pytest.mark.parametrize("name", sorted(KEY_TYPES))
def test_key_types_append_and_register(table_root: str, name: str) -> None:
    key_fields, columns = KEY_TYPES[name]
    schema = pa.schema([*key_fields, ("v", pa.int64())])
    table = create_table(table_root, schema, primary_key=[f[0] for f in key_fields])
    data = pa.table([*columns, [10, 20]], schema=schema)
    part = table.partition()
    assert part.append(data).position == 1
    url = write_parquet(export_url(table_root), data)
    assert part.register([url]).position == 2
    snap = open_table(table_root).partition().snapshot()
    assert [d.rows for d in snap.deltas] == [2, 2]


def test_partition_values_are_typed_text_and_validated(table_root: str) -> None:
    table = new_table(table_root, partition_by=["day", "n", "flag"])
    part = table.partition({"day": dt.date(2024, 5, 1), "n": 7, "flag": True})
    assert part.values == {"day": "2024-05-01", "n": "7", "flag": "true"}
    with pytest.raises(InvalidPartition, match=rf"table {table.url}: partition values name "
                                               r"columns \['day'\] but the table is "
                                               r"partitioned by \['day', 'n', 'flag'\]"):
        table.partition({"day": "x"})
    with pytest.raises(InvalidPartition, match=r"value 1\.5 of type float"):
        table.partition({"day": "x", "n": 1.5, "flag": False})  # type: ignore[dict-item]


HOSTILE = ["../../escaped", "/", "a/b", "..", ".", "%2e%2e", "x=y", "new\nline", "é ü", ""]


def test_partition_values_too_long_for_a_path_are_refused(table_root: str) -> None:
    table = new_table(table_root, partition_by=["p"])
    with pytest.raises(InvalidPartition, match="'p': value is 302 bytes once escaped"):
        table.partition({"p": "/" * 100})
    assert table.partition({"p": "x" * 200}).append(
        pa.table({"id": [1], "v": ["x"]}, schema=SCHEMA)).position == 1


def test_partition_values_never_escape_the_root(table_root: str) -> None:
    table = new_table(table_root, partition_by=["p"])
    for value in HOSTILE:
        table.partition({"p": value}).append(pa.table({"id": [1], "v": ["x"]}, schema=SCHEMA))
    parent = table_root.rsplit("/", 1)[0]
    outside = {f for f in files_under(parent) if not f.startswith("t/")}
    assert outside == set()
    inside = files_under(table_root)
    assert all(f.startswith(("_table/", "partitions/p=")) for f in inside)
    # each value is one path component, and listing maps it back to the value
    assert all(f.count("/") == 3 for f in inside if f.startswith("partitions/"))
    listed = sorted(p.values["p"] for p in open_table(table_root).partitions())
    assert listed == sorted(HOSTILE)
    assert all("\n" not in str(p.key) for p in table.partitions())


def test_partitions_lists_only_partitions_with_commits(table_root: str) -> None:
    table = new_table(table_root, partition_by=["day", "region"])
    rows = pa.table({"id": [1], "v": ["x"]}, schema=SCHEMA)
    table.partition({"day": "d1", "region": "eu"}).append(rows)
    table.partition({"day": "d1", "region": "us"}).append(rows)
    table.partition({"day": "d2", "region": "eu"}).append(rows)
    table.partition({"day": "d3", "region": "eu"})  # a handle only: no commit
    listed = [p.values for p in table.partitions()]
    assert listed == [{"day": "d1", "region": "eu"}, {"day": "d1", "region": "us"},
                      {"day": "d2", "region": "eu"}]


def test_unpartitioned_table_has_one_partition(table_root: str) -> None:
    table = new_table(table_root)
    assert table.partitions() == []
    table.partition().append(pa.table({"id": [1], "v": ["x"]}, schema=SCHEMA))
    assert [p.values for p in table.partitions()] == [{}]


def test_list_tables(table_root: str) -> None:
    new_table(f"{table_root}/a")
    new_table(f"{table_root}/b")
    write_parquet(f"{table_root}/not-a-table/x.parquet", {"a": [1]})
    assert list_tables(table_root) == [f"{table_root}/a", f"{table_root}/b"]
    assert list_tables(f"{table_root}/a") == [f"{table_root}/a"]


def test_table_partition_and_snapshot_pickle(table_root: str) -> None:
    table = new_table(table_root)
    part = table.partition()
    part.append(pa.table({"id": [1], "v": ["x"]}, schema=SCHEMA))
    snap = part.snapshot()
    table2, part2, snap2 = pickle.loads(pickle.dumps((table, part, snap)))
    assert table2.schema == table.schema
    assert part2 == part
    assert snap2 == snap
