"""Deltas: appended Arrow data, files registered in place, DELETE and CDC, schema evolution."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compactor import (
    CdcOps,
    ChangedFile,
    DeltaKind,
    MissingFile,
    SchemaMismatch,
    open_table,
)
from tests.compactor._storage import (
    SCHEMA,
    export_url,
    files_under,
    new_table,
    write_parquet,
)

ROWS = pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"]}, schema=SCHEMA)


def test_appended_data_is_written_as_parquet_in_the_partition(table_root: str) -> None:
    table = new_table(table_root, partition_by=["day"])
    delta = table.partition({"day": "d1"}).append(ROWS)
    assert (delta.position, delta.kind, delta.rows) == (1, DeltaKind.UPSERT, 3)
    (file,) = delta.files
    assert file.url.startswith(f"{table_root}/partitions/day=d1/data/")
    assert file.size == delta.size > 0
    assert table.open_file(file).read().equals(ROWS)


def test_registered_files_are_referenced_in_place_copying_nothing(table_root: str) -> None:
    table = new_table(table_root)
    urls = [write_parquet(export_url(table_root), ROWS) for _ in range(3)]
    sizes = files_under(f"{table_root}-exports")
    before = files_under(table_root)

    delta = table.partition().register(urls)

    assert [f.url for f in delta.files] == urls
    assert [f.size for f in delta.files] == list(sizes.values())
    assert [f.rows for f in delta.files] == [3, 3, 3]
    added = set(files_under(table_root)) - set(before)
    # the one new object under the table root is the commit itself, a small JSON file
    assert added == {"partitions/default/_log/00000000000000000001.json"}
    assert files_under(f"{table_root}-exports") == sizes


def test_fingerprint_detects_changed_and_missing_files(table_root: str) -> None:
    table = new_table(table_root)
    url = write_parquet(export_url(table_root), ROWS)
    (file,) = table.partition().register([url]).files
    table.verify_file(file)
    assert table.open_file(file).metadata.num_rows == 3

    write_parquet(url, pa.table({"id": [9], "v": ["z"]}, schema=SCHEMA))
    with pytest.raises(ChangedFile, match=f"file {url} changed since it was registered"):
        table.open_file(file)
    table.storage.fs.rm(table.storage.strip(url))
    with pytest.raises(MissingFile, match=f"file {url} does not exist"):
        table.verify_file(file)


def test_fingerprint_is_the_etag_on_s3(s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/t"
    table = new_table(root)
    (file,) = table.partition().append(ROWS).files
    assert file.fingerprint.startswith("etag:")


def test_delete_delta_needs_only_key_columns(table_root: str) -> None:
    table = new_table(table_root)
    part = table.partition()
    part.append(ROWS)
    deleted = part.append(pa.table({"id": [2]}), kind=DeltaKind.DELETE)
    url = write_parquet(export_url(table_root), {"id": [3], "before_image": ["c"]})
    registered = part.register([url], kind=DeltaKind.DELETE)
    assert [d.kind for d in part.snapshot().deltas] == ["upsert", "delete", "delete"]
    assert (deleted.rows, registered.rows) == (1, 1)
    # extra columns of a delete are not table data: the schema does not grow
    assert table.refresh().schema == SCHEMA


def test_delete_delta_carries_the_ordering_column_if_the_table_has_one(table_root: str) -> None:
    schema = pa.schema([("id", pa.int64()), ("lsn", pa.int64()), ("v", pa.string())])
    part = new_table(table_root, schema, ordering_column="lsn").partition()
    part.append(pa.table({"id": [1], "lsn": [5]}), kind=DeltaKind.DELETE)
    with pytest.raises(SchemaMismatch, match="missing column 'lsn' \\(delete delta\\)"):
        part.append(pa.table({"id": [1]}), kind=DeltaKind.DELETE)


def test_cdc_delta_with_default_dms_ops(table_root: str) -> None:
    part = new_table(table_root).partition()
    data = pa.table({"Op": ["I", "U", "D"], "id": [1, 1, 2], "v": ["a", "b", None]})
    delta = part.append(data, kind=DeltaKind.CDC)
    assert delta.cdc == CdcOps("Op", ("I", "U"), ("D",))
    stored = part.snapshot().deltas[0]
    assert stored.cdc == delta.cdc
    # the op column is change metadata, not a table column
    assert part.table.refresh().schema == SCHEMA


def test_cdc_delta_with_configured_integer_ops(table_root: str) -> None:
    part = new_table(table_root).partition()
    ops = CdcOps("change_type", upsert=(1, 2), delete=(3,))
    url = write_parquet(export_url(table_root),
                        pa.table({"change_type": pa.array([1, 3, 2], pa.int8()),
                                  "id": [1, 2, 3], "v": ["a", None, "c"]}))
    delta = part.register([url], kind=DeltaKind.CDC, cdc=ops)
    assert open_table(part.table.url).partition().snapshot().deltas[0].cdc == ops == delta.cdc


def test_a_cdc_op_column_named_as_a_table_column_is_refused_as_a_schema_mismatch(
        table_root: str) -> None:
    part = new_table(table_root).partition()
    data = pa.table({"v": ["I", "D"], "id": [1, 2]})
    with pytest.raises(SchemaMismatch) as refused:
        part.append(data, kind=DeltaKind.CDC, cdc=CdcOps("v"))
    assert str(refused.value).startswith(
        f"partition {part.key} of {part.table.url}: CDC op column 'v' is also a column of the "
        "table: its op values would be read as that column's")
    assert str(refused.value).endswith("; nothing was committed")
    assert open_table(part.table.url).partitions() == []  # nothing committed


def test_cdc_ops_must_be_unambiguous() -> None:
    with pytest.raises(ValueError, match="mean both upsert and delete"):
        CdcOps("Op", upsert=("I", "D"), delete=("D",))


def test_added_nullable_columns_evolve_the_schema(table_root: str) -> None:
    table = new_table(table_root)
    part = table.partition()
    first = part.append(ROWS)
    url = write_parquet(export_url(table_root),
                        pa.table({"id": [4], "v": ["d"], "extra": [1.5]}))
    second = part.register([url])
    assert (first.schema_version, second.schema_version) == (1, 2)
    reopened = open_table(table_root)
    assert reopened.schema == SCHEMA.append(pa.field("extra", pa.float64(), nullable=True))
    assert reopened.metadata_at(1).schema == SCHEMA
    assert part.snapshot().schema_version == 2
    # a later delta may leave the new (nullable) column out
    assert part.append(ROWS).schema_version == 2


def test_equivalent_encodings_are_not_type_changes(table_root: str) -> None:
    part = new_table(table_root).partition()
    data = pa.table({"id": [1, 2], "v": pa.array(["a", "a"], pa.large_string())})
    part.append(data)
    part.append(pa.table({"id": [3], "v": pa.array(["x"]).dictionary_encode()}))
    assert part.table.refresh().schema == SCHEMA


def test_incompatible_type_change_names_column_and_both_types(table_root: str) -> None:
    part = new_table(table_root).partition()
    url = write_parquet(export_url(table_root), {"id": [1], "v": [1.5]})
    with pytest.raises(SchemaMismatch) as e:
        part.register([url])
    assert str(e.value) == (f"file {url}: column 'v' changes type from string (table) "
                            "to double")
    assert part.version() == 0


def test_two_files_adding_one_column_with_different_types_are_refused(table_root: str) -> None:
    part = new_table(table_root).partition()
    a = write_parquet(export_url(table_root), {"id": [1], "w": [1]})
    b = write_parquet(export_url(table_root), {"id": [2], "w": ["x"]})
    with pytest.raises(SchemaMismatch, match=f"file {b}: column 'w' changes type from int64"):
        part.register([a, b])
    assert part.table.refresh().version == 1
    assert part.version() == 0


def test_listing_deltas_sizes_and_rows_without_reading_data(table_root: str) -> None:
    part = new_table(table_root).partition()
    for n in range(1, 6):
        part.append(ROWS.slice(0, n % 3 + 1))
    deltas = part.deltas(since=2)
    assert [d.position for d in deltas] == [3, 4, 5]
    assert [d.rows for d in deltas] == [1, 2, 3]
    assert [d.position for d in part.deltas(since=1, until=3)] == [2, 3]
    snap = part.snapshot()
    assert [d.position for d in snap.deltas_since(3)] == [4, 5]
    assert snap.pending_rows == 2 + 3 + 1 + 2 + 3
    assert snap.pending_size == sum(d.size for d in snap.deltas) > 0


def test_row_group_offsets_in_registered_files(table_root: str) -> None:
    part = new_table(table_root).partition()
    url = export_url(table_root)
    write_parquet(url, pa.table({"id": list(range(10)), "v": ["x"] * 10}), row_group_size=3)
    assert pq.ParquetFile(part.table.storage.fs.open(part.table.storage.strip(url))
                          ).metadata.num_row_groups == 4
    assert part.register([url]).rows == 10
