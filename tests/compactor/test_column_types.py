"""Column types a table stores: plain types for dictionary and view columns, none Parquet
cannot hold, a null-typed column that takes the first type a file gives; and input the
schema rule must refuse before anything is committed (repeated column names)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import runtime
from compactor import DeltaKind, create_table
from compactor.compaction import compact_partition
from compactor.errors import InvalidTableSpec, NullKey, NullValue, SchemaMismatch
from compactor.reader import read_partition
from compactor.table import Table


@pytest.fixture(scope="module")
def rt() -> Iterator[None]:
    with runtime.init("local", num_cpus=2):
        yield


def _state(table: Table) -> list[dict[str, Any]]:
    part = table.partition()
    return sorted(read_partition(table, part).to_pylist(), key=lambda r: r["k"])


def _compact(table: Table) -> None:
    # small files: a later round rewrites (reads, takes rows of, writes) compacted files
    assert compact_partition(table, table.partition(), target_file_size=1).committed


def test_dictionary_and_view_columns_are_stored_as_their_plain_types(rt, tmp_path) -> None:
    schema = pa.schema([
        ("k", pa.string_view()), ("lsn", pa.int64()), ("b", pa.binary_view()),
        ("cat", pa.dictionary(pa.int8(), pa.string())),
        ("grade", pa.dictionary(pa.int32(), pa.int64())),
        ("tags", pa.list_(pa.field("item", pa.dictionary(pa.int8(), pa.string())))),
    ])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["k"],
                         ordering_column="lsn", bucket_count=2)
    assert table.schema == pa.schema([
        ("k", pa.string()), ("lsn", pa.int64()), ("b", pa.binary()), ("cat", pa.string()),
        ("grade", pa.int64()), ("tags", pa.list_(pa.string()))])
    expected: dict[str, dict[str, Any]] = {}

    def append(keys: list[str], lsn: int, data_schema: pa.Schema) -> None:
        rows = [{"k": k, "lsn": lsn, "b": k.encode() * 2, "cat": f"c{(lsn + i) % 200}",
                 "grade": (lsn + i) % 7, "tags": [k, "t"]} for i, k in enumerate(keys)]
        table.partition().append(pa.Table.from_pylist(rows, schema=data_schema))
        expected.update({r["k"]: r for r in rows})

    append([f"k{i}" for i in range(40)], 1, schema)
    _compact(table)
    # the same columns plain, then 200 categories (more than an int8 dictionary holds)
    append([f"k{i}" for i in range(0, 40, 3)], 2, table.schema)
    append([f"k{i}" for i in range(30, 250)], 3, table.schema)
    _compact(table)
    append([f"k{i}" for i in range(5, 9)], 4, schema)
    _compact(table)
    assert read_partition(table, table.partition()).schema == table.schema
    assert _state(table) == sorted(expected.values(), key=lambda r: r["k"])


@pytest.mark.parametrize("column", [
    pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval()),
    pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1])]),
    pa.RunEndEncodedArray.from_arrays([1], ["x"]),
], ids=["interval", "union", "run-end"])
def test_a_column_parquet_cannot_hold_is_refused_and_changes_nothing(rt, tmp_path, column
                                                                     ) -> None:
    table = create_table(f"file://{tmp_path}/t", pa.schema([("k", pa.int64())]),
                         primary_key=["k"])
    part = table.partition()
    part.append(pa.table({"k": [1]}))
    with pytest.raises(SchemaMismatch, match=r"column 'x' has type .*which Parquet files "
                                             r"cannot hold; nothing was committed"):
        part.append(pa.table({"k": [2], "x": column}))
    assert table.refresh().schema == pa.schema([("k", pa.int64())])
    assert len(part.snapshot().deltas) == 1
    _compact(table)  # rounds still run
    assert _state(table) == [{"k": 1}]
    with pytest.raises(InvalidTableSpec, match="column 'x' has type"):
        create_table(f"file://{tmp_path}/u", pa.schema([("k", pa.int64()), ("x", column.type)]),
                     primary_key=["k"])


def test_a_null_typed_table_column_takes_the_first_type_a_file_gives(rt, tmp_path) -> None:
    # as --schema-from makes it of an export whose column happened to be all null
    schema = pa.schema([("k", pa.int64()), ("note", pa.null()), ("lsn", pa.int64())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["k"],
                         ordering_column="lsn", bucket_count=2)
    part = table.partition()
    part.append(pa.table({"k": [1, 2, 3], "note": pa.nulls(3), "lsn": [1, 1, 1]}))
    _compact(table)  # compacted files with the column as Parquet's null type
    part.append(pa.table({"k": [2, 4], "note": ["two", "four"], "lsn": [2, 2]}))
    assert table.refresh().schema.field("note").type == pa.string()
    _compact(table)
    assert [r["note"] for r in _state(table)] == [None, "two", None, "four"]
    with pytest.raises(SchemaMismatch, match="column 'note' changes type from string"):
        part.append(pa.table({"k": [5], "note": [5], "lsn": [3]}))


def test_repeated_column_names_are_refused_before_anything_is_committed(rt, tmp_path) -> None:
    table = create_table(f"file://{tmp_path}/t", pa.schema([("k", pa.int64()),
                                                            ("lsn", pa.int64())]),
                         primary_key=["k"], ordering_column="lsn")
    part = table.partition()
    for name in ("k", "lsn", "v"):
        names = ["k", "lsn", "v", name]
        data = pa.Table.from_arrays([pa.array([1]), pa.array([1]), pa.array([1]),
                                     pa.array([2])], names=names)
        with pytest.raises(SchemaMismatch, match=rf"column\(s\) \['{name}'\] appear more than "
                                                 "once"):
            part.append(data)
        path = tmp_path / f"dup-{name}.parquet"
        pq.write_table(data, path)
        with pytest.raises(SchemaMismatch, match=rf"file .*dup-{name}.parquet: column\(s\) "):
            part.register([f"file://{path}"])
    assert part.version() == 0


def test_a_null_key_is_found_beside_a_struct_field_of_the_same_path(tmp_path) -> None:
    """Column "a.b" and field b of struct a share the Parquet path a.b: the null check must
    look at the column's own statistics, not the struct field's."""
    table = create_table(f"file://{tmp_path}/t", pa.schema([("a.b", pa.int64())]),
                         primary_key=["a.b"])
    data = pa.table({"a.b": pa.array([1, None]), "a": pa.array([{"b": 1}, {"b": 2}])})
    path = tmp_path / "f.parquet"
    pq.write_table(data, path)
    with pytest.raises(NullKey, match=r"null in key column 'a\.b' at row 1"):
        table.partition().register([f"file://{path}"])


def test_a_categorical_key_and_a_dictionary_holding_null_are_taken_as_their_values(
        rt, tmp_path) -> None:
    """A schema from a file with a categorical key gives a table keyed by the text; a column
    whose dictionary holds a null (pyarrow cannot write one) is appended as its values."""
    table = create_table(f"file://{tmp_path}/t", pa.schema([
        ("k", pa.dictionary(pa.int8(), pa.string())), ("v", pa.int64())]), primary_key=["k"])
    assert table.schema == pa.schema([("k", pa.string()), ("v", pa.int64())])
    with_null = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()),
                                               pa.array(["a", None]))
    table.partition().append(pa.table({"k": ["x", "y", "z"], "v": [1, 2, 3], "c": with_null}))
    assert table.refresh().schema.field("c").type == pa.string()
    _compact(table)
    assert [(r["k"], r["c"]) for r in _state(table)] == [("x", "a"), ("y", None), ("z", "a")]


def test_list_views_stay_list_views_and_are_not_taken_for_lists(rt, tmp_path) -> None:
    """pyarrow casts a list view to a list wrongly ([[1], [2]] to [[1], []]): a table keeps
    list views as such, and list-view data for a list column is refused."""
    view = pa.list_view(pa.int64())
    table = create_table(f"file://{tmp_path}/t", pa.schema([("k", pa.int64()), ("l", view)]),
                         primary_key=["k"])
    assert table.schema.field("l").type == view
    part = table.partition()
    part.append(pa.table({"k": [1, 2, 3], "l": pa.array([[1], [2], [3, 4]], view)}))
    _compact(table)
    part.append(pa.table({"k": [2], "l": pa.array([[5, 6]], view)}))
    _compact(table)
    assert [r["l"] for r in _state(table)] == [[1], [5, 6], [3, 4]]
    plain = create_table(f"file://{tmp_path}/u", pa.schema([("k", pa.int64()),
                                                            ("l", pa.list_(pa.int64()))]),
                         primary_key=["k"])
    with pytest.raises(SchemaMismatch, match="column 'l' changes type"):
        plain.partition().append(pa.table({"k": [1], "l": pa.array([[1]], view)}))


def test_appended_nested_dictionaries_and_views_are_written_as_their_values(rt, tmp_path
                                                                           ) -> None:
    """Data pyarrow cannot write as it is (a view inside a struct, a dictionary with a null
    among its values inside a list, a dictionary of lists) is written in the plain types the
    table stores."""
    n = 3000
    table = create_table(f"file://{tmp_path}/t", pa.schema([("k", pa.int64())]),
                         primary_key=["k"])
    data = pa.table({
        "k": range(n),
        "s": pa.array([{"a": f"x{i}"} for i in range(n)], pa.struct([("a", pa.string_view())])),
        "ld": pa.ListArray.from_arrays(pa.array(range(n + 1), pa.int32()),
                                       pa.DictionaryArray.from_arrays(
                                           pa.array([i % 2 for i in range(n)], pa.int8()),
                                           pa.array(["a", None]))),
        "dl": pa.DictionaryArray.from_arrays(pa.array([i % 2 for i in range(n)], pa.int32()),
                                             pa.array([[1], [2, 3]], pa.list_(pa.int64()))),
    })
    table.partition().append(data)
    assert table.refresh().schema == pa.schema([
        ("k", pa.int64()), ("s", pa.struct([("a", pa.string())])), ("ld", pa.list_(pa.string())),
        ("dl", pa.list_(pa.int64()))])
    _compact(table)
    got = _state(table)
    assert len(got) == n and got[1] == {"k": 1, "s": {"a": "x1"}, "ld": [None], "dl": [2, 3]}


def test_registered_files_with_dictionaries_inside_nested_columns_compact(rt, tmp_path
                                                                           ) -> None:
    """A file pyarrow wrote from dictionaries inside a list, a struct and a map, in several
    row groups (each with a dictionary of its own): Arrow reads such a column across row
    groups as chunks it cannot convert ('Nested data conversions not implemented for chunked
    array outputs'), so every round of the partition failed; materialize reads it a row group
    at a time."""
    words = pa.dictionary(pa.int32(), pa.string())
    plain = pa.schema([("k", pa.int64()), ("l", pa.list_(pa.string())),
                       ("s", pa.struct([("w", pa.string())])),
                       ("m", pa.map_(pa.string(), pa.string()))])
    table = create_table(f"file://{tmp_path}/t", plain, primary_key=["k"], bucket_count=2)
    expected: dict[int, dict[str, Any]] = {}
    for r in range(2):
        rows = [{"k": k, "l": None if k % 7 == 0 else [f"w{(k + r) % 5}", f"v{k % 3}"][:k % 3],
                 "s": {"w": f"s{k % 4}-{r}"}, "m": [(f"x{k % 2}", f"y{(k + r) % 9}")]}
                for k in range(r * 500, 3000)]
        data = pa.Table.from_pylist(rows, schema=plain)
        data = data.set_column(1, "l", data.column("l").cast(pa.list_(words))).set_column(
            2, "s", data.column("s").cast(pa.struct([("w", words)]))).set_column(
            3, "m", data.column("m").cast(pa.map_(pa.string(), words)))
        path = tmp_path / f"d{r}.parquet"
        pq.write_table(data, path, row_group_size=700)
        assert pq.ParquetFile(path).metadata.num_row_groups == 5 - r
        table.partition().register([str(path)])
        expected.update({row["k"]: {**row, "m": [tuple(e) for e in row["m"]]} for row in rows})
        _compact(table)
        got = [{**row, "m": [tuple(e) for e in row["m"]]} for row in _state(table)]
        assert got == [expected[k] for k in sorted(expected)], r


def test_a_null_in_a_field_declared_not_nullable_inside_a_column_is_named(rt, tmp_path
                                                                          ) -> None:
    """A null inside a struct (or a list of them) where the table declares the field not
    nullable: the Parquet writer refused it as "Column 'q' is declared non-nullable but
    contains nulls", an ArrowInvalid naming neither the data nor the row; it is a NullValue
    naming both (rows counted across chunks), and nothing is committed."""
    inner = pa.struct([pa.field("q", pa.int64(), nullable=False)])
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False), ("s", inner),
                        ("l", pa.list_(inner))])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["k"])
    part = table.partition()

    def data(s: list[Any], lists: list[Any]) -> pa.Table:
        whole = pa.table([pa.array(range(4), pa.int64()), pa.array(s, inner),
                          pa.array(lists, pa.list_(inner))], schema=schema)
        return pa.concat_tables([whole.slice(0, 2), whole.slice(2)])

    good_s = [{"q": 1}, None, {"q": 3}, {"q": 4}]
    good_l = [[{"q": 1}], None, [], [{"q": 2}, {"q": 3}]]
    bad = [(data(good_s, [*good_l[:3], [{"q": 2}, {"q": None}]]),
            r"null at row 3 in column 'l' \(list<item: struct<q: int64 not null>>\)"),
           (data([{"q": 1}, {"q": None}, None, {"q": 4}], good_l),
            r"null at row 1 in column 's' \(struct<q: int64 not null>\)")]
    for rows, message in bad:
        with pytest.raises(NullValue, match=r"appended data for partition default of .*: "
                                            + message + r", inside it where the table declares "
                                            r"a field not nullable .*nothing was committed"):
            part.append(rows)
    assert part.version() == 0
    part.append(data(good_s, good_l))
    _compact(table)
    assert _state(table) == data(good_s, good_l).to_pylist()


def test_a_cdc_delete_may_leave_a_column_declared_not_nullable_null(rt, tmp_path) -> None:
    """The data's own schema declaring the column not nullable too (the table's, plus the op
    column): the Parquet writer refused the delete row's null, as an ArrowInvalid."""
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False),
                        pa.field("v", pa.int64(), nullable=False)])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["k"])
    part = table.partition()
    part.append(pa.table({"k": [1, 2], "v": [10, 20]}, schema=schema))
    cdc = pa.table([pa.array([1, 3], pa.int64()), pa.array([None, 30], pa.int64()),
                    pa.array(["D", "I"])], schema=schema.append(pa.field("Op", pa.string())))
    part.append(cdc, kind=DeltaKind.CDC)
    with pytest.raises(NullValue, match=r"null at row 0 in column 'v', which the table "
                                        "declares not nullable"):
        part.append(cdc.set_column(2, "Op", pa.array(["I", "I"])), kind=DeltaKind.CDC)
    _compact(table)
    assert _state(table) == [{"k": 2, "v": 20}, {"k": 3, "v": 30}]


def test_a_delete_may_repeat_a_column_it_ignores(rt, tmp_path) -> None:
    table = create_table(f"file://{tmp_path}/t", pa.schema([("k", pa.int64()),
                                                            ("v", pa.int64())]),
                         primary_key=["k"])
    part = table.partition()
    part.append(pa.table({"k": [1, 2], "v": [1, 2]}))
    before_image = pa.Table.from_arrays([pa.array([1]), pa.array([1]), pa.array([1])],
                                        names=["k", "v", "v"])
    part.append(before_image, kind=DeltaKind.DELETE)
    with pytest.raises(SchemaMismatch, match=r"column\(s\) \['k'\] appear more than once"):
        part.append(pa.Table.from_arrays([pa.array([2]), pa.array([2])], names=["k", "k"]),
                    kind=DeltaKind.DELETE)
    _compact(table)
    assert _state(table) == [{"k": 2, "v": 2}]
