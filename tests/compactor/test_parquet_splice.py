"""Row groups moved between Parquet files as bytes: the footer codec, the assembled files (read
back by pyarrow and by DuckDB, an independent reader), and materialize copying the row groups
a rewritten file keeps whole."""

from __future__ import annotations

import struct
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compactor import files, parquet_splice
from compactor import thrift_compact as tc
from compactor.fs import Storage
from compactor.layout import PartitionKey
from compactor.pipeline import materialize
from compactor.pipeline.locators import file_rows
from compactor.pipeline.row_sets import RowSet


def _footer_bytes(data: bytes) -> bytes:
    length = struct.unpack("<I", data[-8:-4])[0]
    return data[-8 - length:-8]


@pytest.mark.parametrize("value, encoded", [
    # the compact protocol's examples: field 1 i32 1; field 2 (delta 2) true; a binary; a
    # field 20 (long form: type, zigzag id); i64 -1 (zigzag 1); a list of 3 i32; a double
    (tc.Struct([[1, tc.I32, 1]]), b"\x15\x02\x00"),
    (tc.Struct([[2, tc.TRUE, True], [3, tc.TRUE, False]]), b"\x21\x12\x00"),
    (tc.Struct([[1, tc.BINARY, b"ab"]]), b"\x18\x02ab\x00"),
    (tc.Struct([[20, tc.I64, -1]]), b"\x06\x28\x01\x00"),
    (tc.Struct([[1, tc.LIST, tc.Sequence(tc.I32, [1, -2, 300])]]),
     b"\x19\x35\x02\x03\xd8\x04\x00"),
    (tc.Struct([[1, tc.DOUBLE, 1.5]]), b"\x17" + struct.pack("<d", 1.5) + b"\x00"),
])
def test_the_codec_writes_the_compact_protocol(value: tc.Struct, encoded: bytes) -> None:
    assert tc.dumps(value) == encoded
    assert tc.loads(encoded) == value


def test_the_codec_round_trips_every_kind_of_value() -> None:
    inner = tc.Struct([[3, tc.BYTE, -5], [4, tc.I16, -300], [40, tc.STRUCT, tc.Struct()]])
    value = tc.Struct([
        [1, tc.I64, -(2**63)], [2, tc.I64, 2**63 - 1], [5, tc.STRUCT, inner],
        [6, tc.LIST, tc.Sequence(tc.BINARY, [bytes([i]) * i for i in range(20)])],
        [7, tc.SET, tc.Sequence(tc.TRUE, [1, 2, 1])],
        [8, tc.MAP, tc.Mapping(tc.BINARY, tc.I32, [(b"k", 1), (b"\xff", -1)])],
        [9, tc.MAP, tc.Mapping(0, 0, [])], [30000, tc.TRUE, True],
    ])
    assert tc.loads(tc.dumps(value)) == value
    with pytest.raises(tc.ThriftError):
        tc.loads(tc.dumps(value)[:-1])
    with pytest.raises(tc.ThriftError):
        tc.loads(tc.dumps(value) + b"\x00")


def test_damaged_footers_are_thrift_errors() -> None:
    """Bytes a damaged footer may hold: nesting deeper than Python recurses, a varint that
    never ends, a string longer than what is left, an unknown type."""
    for data in (b"\x1c" * 100_000, b"\x15" + b"\xff" * 20, b"\x18\x10ab", b"\x1d\x00"):
        with pytest.raises(tc.ThriftError):
            tc.loads(data)


def _wide_table(rows: int, seed: int) -> pa.Table:
    """Many columns (more than 15: long list headers and field deltas), nested and
    dictionary-worthy ones, negative numbers, nulls."""
    rng = np.random.default_rng(seed)
    columns = {f"c{i}": rng.integers(-(2**40), 2**40, rows) for i in range(14)}
    columns.update({
        "id": np.arange(rows, dtype=np.int64) + seed * rows,
        "s": pa.array([["x", "yy", None, "zzz"][i] for i in rng.integers(0, 4, rows)]),
        "f": rng.normal(size=rows), "when": pa.array(rng.integers(0, 2**40, rows),
                                                   pa.timestamp("us", "UTC")),
        "l": pa.array([[int(i), None] for i in rng.integers(0, 9, rows)]),
        "st": pa.array([{"a": int(i), "b": str(i)} for i in rng.integers(0, 5, rows)]),
    })
    return pa.table(columns).replace_schema_metadata({"owner": "tests"})


def test_pyarrows_footers_read_back_to_the_same_bytes(tmp_path: Path) -> None:
    table = _wide_table(5000, 1)
    for i, options in enumerate([{}, {"compression": "zstd", "use_dictionary": ["s"]},
                                 {"write_statistics": False, "row_group_size": 700}]):
        pq.write_table(table, tmp_path / f"{i}.parquet", **options)  # type: ignore[arg-type]
        footer = _footer_bytes((tmp_path / f"{i}.parquet").read_bytes())
        assert tc.dumps(tc.loads(footer)) == footer


def test_an_assembled_file_reads_back_as_its_row_groups_in_order(tmp_path: Path) -> None:
    """Row groups of two files and encoded rows, in one file: pyarrow and DuckDB read the
    rows in order, with the table's schema and metadata and each row group's statistics."""
    options = materialize.write_options("snappy", ["s"])
    template = parquet_splice.Template(_wide_table(1, 0).schema, options)
    parts, sources = [], []
    for seed in (1, 2):
        table = _wide_table(3000, seed)
        pq.write_table(table, tmp_path / f"src{seed}.parquet", row_group_size=1000, **options)
        data = (tmp_path / f"src{seed}.parquet").read_bytes()
        footer = parquet_splice.footer_of(lambda s, e, d=data: d[s:e], len(data))
        assert template.same_layout(footer)
        sources.append((data, parquet_splice.row_groups(footer)))
        parts.append(table)
    encoded = _wide_table(1500, 3)
    out = tmp_path / "out.parquet"
    with open(out, "wb") as f:
        spliced = parquet_splice.SplicedWriter(f, template)
        expected = []

        def copy(source: int, g: int) -> None:
            data, groups = sources[source]
            assert template.takes(groups[g])
            start, end = parquet_splice.span(groups[g])  # type: ignore[misc]
            spliced.copy(data[start:end], groups[g], start)
            expected.append(parts[source].slice(g * 1000, 1000))

        # copies first (before the writer's own magic), encoded rows between copies, a copy
        # last: groups 2 and 0 of the first file, 1500 rows, group 1 of the second, 1500 rows,
        # group 0 of the second
        copy(0, 2)
        copy(0, 0)
        spliced.write(encoded, options, 1000)
        expected.append(encoded)
        copy(1, 1)
        spliced.write(encoded, options, 1000)
        expected.append(encoded)
        copy(1, 0)
        spliced.close()
    want = pa.concat_tables(expected)
    back = pq.read_table(out)
    assert back.equals(want) and back.schema.metadata == want.schema.metadata
    meta = pq.read_metadata(out)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == \
        [1000, 1000, 1000, 500, 1000, 1000, 500, 1000]
    reference = tmp_path / "reference.parquet"
    pq.write_table(want.schema.empty_table(), reference, **options)
    assert meta.metadata == pq.read_metadata(reference).metadata  # (ARROW:schema and owner)
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(want.schema.get_field_index("id")).statistics
        ids = pq.ParquetFile(out).read_row_group(i, columns=["id"]).column("id")
        assert (stats.min, stats.max) == (ids[0].as_py(), ids[-1].as_py())
    # an independent reader: every row and column (nested too) as pyarrow reads them
    got = duckdb.sql(f"SELECT * FROM read_parquet('{out}')").arrow()
    got = got.read_all() if hasattr(got, "read_all") else got
    assert got.num_rows == want.num_rows
    for name in ("id", "c0", "s", "f", "when", "l", "st"):
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


def test_only_row_groups_stored_as_the_tables_files_are_taken(tmp_path: Path) -> None:
    """Another Parquet schema (a column not nullable, or of another type), another codec, a
    page index or a bloom filter: the row group is decoded instead."""
    schema = pa.schema([("id", pa.int64()), ("v", pa.string())])
    template = parquet_splice.Template(schema, materialize.write_options("zstd"))

    def footer(table: pa.Table, **options: object) -> tc.Struct:
        path = tmp_path / "f.parquet"
        pq.write_table(table, path, **options)  # type: ignore[arg-type]
        data = path.read_bytes()
        return parquet_splice.footer_of(lambda s, e: data[s:e], len(data))

    rows = pa.table({"id": [1, 2], "v": ["a", "b"]}, schema=schema)
    same = footer(rows, compression="zstd")
    assert template.same_layout(same) and template.takes(parquet_splice.row_groups(same)[0])
    assert not template.takes(parquet_splice.row_groups(footer(rows, compression="snappy"))[0])
    for other in (pa.schema([pa.field("id", pa.int64(), nullable=False), ("v", pa.string())]),
                  pa.schema([("id", pa.int32()), ("v", pa.string())]),
                  pa.schema([("v", pa.string()), ("id", pa.int64())])):
        assert not template.same_layout(footer(rows.cast(other) if other.names == schema.names
                                               else rows.select(["v", "id"]),
                                               compression="zstd"))
    indexed = footer(rows, compression="zstd", write_page_index=True)
    assert parquet_splice.span(parquet_splice.row_groups(indexed)[0]) is None
    with pytest.raises(parquet_splice.NotParquet):
        parquet_splice.footer_of(lambda s, e: b"PAR1" + b"\x00" * 20, 24)


SCHEMA = pa.schema([("id", pa.int64()), ("v", pa.string())])


def _compacted(tmp_path: Path, rows: int, codec: str) -> tuple[Storage, files.DataFile]:
    """A file as materialize writes them: row groups of ROW_GROUP_ROWS."""
    storage = Storage(f"file://{tmp_path}")
    table = pa.table({"id": np.arange(rows, dtype=np.int64),
                      "v": pa.array([f"v{i % 97}" for i in range(rows)])}, schema=SCHEMA)
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=materialize.ROW_GROUP_ROWS,
                   **materialize.write_options(codec))
    file, parquet = files.describe(storage, f"file://{tmp_path}/c.parquet")
    parquet.close()
    return storage, file


@pytest.mark.parametrize("codec, rows_per_file, copied", [
    ("zstd", 1_000_000, 2),  # both whole row groups
    ("snappy", 1_000_000, 0),  # written with zstd: decoded
    # two files of 164,090 rows (the rows kept, cut evenly): the second whole group does not
    # fit in the first file's room: decoded
    ("zstd", 2 * materialize.ROW_GROUP_ROWS - 1000, 1),
])
def test_materialize_copies_the_row_groups_a_bucket_keeps_whole(
        tmp_path: Path, codec: str, rows_per_file: int, copied: int) -> None:
    g = materialize.ROW_GROUP_ROWS
    storage, file = _compacted(tmp_path, 3 * g + 500, "zstd")
    # the first two row groups whole, every other row of the third, the last group's rows
    # but its first
    keep = np.r_[np.arange(2 * g), np.arange(2 * g, 3 * g, 2),
                 np.arange(3 * g + 1, 3 * g + 500)]
    out = materialize.materialize_group(
        storage, PartitionKey(), 0, [materialize.SourceRows(7, file, {3: RowSet.of(keep)})],
        SCHEMA, rows_per_file=rows_per_file, codec=codec)
    assert out.rows_written == len(keep) and out.rows_copied == copied * g
    written = out.written[3]
    count = -(-len(keep) // rows_per_file)
    size = file_rows(len(keep), rows_per_file)
    assert [f.rows for f in written] == [size] * (count - 1) + [len(keep) - size * (count - 1)]
    paths = [storage.strip(f.url) for f in written]
    back = pa.concat_tables([pq.read_table(storage.fs.open(p, "rb")) for p in paths])
    assert back.schema == SCHEMA
    assert back.column("id").to_numpy().tolist() == keep.tolist()
    assert back.column("v").to_pylist() == [f"v{i % 97}" for i in keep]
    got = duckdb.sql("SELECT count(*), sum(id), count(DISTINCT v) FROM read_parquet("
                     f"{[str(p) for p in paths]})").fetchall()
    assert got == [(len(keep), int(keep.sum()), 97)]


def test_small_row_groups_kept_whole_are_written_with_their_neighbours(tmp_path: Path) -> None:
    """Row groups under half the writer's are decoded, not copied: a file's small row groups (a
    round's few new rows, a source written in tiny groups) merge instead of adding up round
    after round."""
    g = materialize.ROW_GROUP_ROWS
    small = materialize.min_copy_rows(10 * g)
    sizes = [g, 1000, 1, 999, small, 1000, small - 1]
    storage = Storage(f"file://{tmp_path}")
    ids = np.arange(sum(sizes), dtype=np.int64)
    table = pa.table({"id": ids, "v": [f"v{i % 97}" for i in ids]}, schema=SCHEMA)
    with pq.ParquetWriter(tmp_path / "s.parquet", SCHEMA,
                          **materialize.write_options("zstd")) as writer:
        at = 0
        for n in sizes:
            writer.write_table(table.slice(at, n), row_group_size=n)
            at += n
    file, parquet = files.describe(storage, f"file://{tmp_path}/s.parquet")
    assert [parquet.metadata.row_group(i).num_rows for i in range(len(sizes))] == sizes
    parquet.close()
    out = materialize.materialize_group(
        storage, PartitionKey(), 0, [materialize.SourceRows(1, file, {0: RowSet.of(ids)})],
        SCHEMA, rows_per_file=10 * g, codec="zstd")
    assert out.rows_copied == g + small
    path = storage.strip(out.written[0][0].url)
    meta = pq.read_metadata(storage.fs.open(path, "rb"))
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == \
        [g, 2000, small, 1000 + small - 1]
    assert pq.read_table(storage.fs.open(path, "rb")).equals(table)


def test_files_of_few_rows_copy_their_row_groups_too(tmp_path: Path) -> None:
    """Where a file holds fewer rows than the writer's row groups (wide rows, a small target
    size), its row groups are that small, and are copied all the same."""
    per_file = 3_000
    storage = Storage(f"file://{tmp_path}")
    ids = np.arange(3 * per_file, dtype=np.int64)
    table = pa.table({"id": ids, "v": [f"v{i % 97}" for i in ids]}, schema=SCHEMA)
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=per_file,
                   **materialize.write_options("zstd"))
    file, parquet = files.describe(storage, f"file://{tmp_path}/s.parquet")
    parquet.close()
    keep = ids[:-1]  # the last row lost: the first two row groups are kept whole
    out = materialize.materialize_group(
        storage, PartitionKey(), 0, [materialize.SourceRows(1, file, {0: RowSet.of(keep)})],
        SCHEMA, rows_per_file=per_file, codec="zstd")
    assert out.rows_copied == 2 * per_file
    back = pa.concat_tables([pq.read_table(storage.fs.open(storage.strip(f.url), "rb"))
                             for f in out.written[0]])
    assert back.equals(table.slice(0, len(keep)))


def test_a_file_begun_by_a_few_rows_before_a_copy_keeps_its_dictionaries(tmp_path: Path) -> None:
    """The first row group is 5 rows (then a copied one): too few to judge the text column
    by, so its sources' few-valued dictionaries decide, and the row groups encoded after the
    copy are dictionary-encoded (they were plain for the rest of the file)."""
    g = materialize.ROW_GROUP_ROWS
    storage = Storage(f"file://{tmp_path}")

    def source(name: str, first: int, rows: int, **options: object) -> files.DataFile:
        ids = np.arange(first, first + rows, dtype=np.int64)
        pq.write_table(pa.table({"id": ids, "v": [f"v{i % 97}" for i in ids]}, schema=SCHEMA),
                       tmp_path / name, row_group_size=g, **options)  # type: ignore[arg-type]
        file, parquet = files.describe(storage, f"file://{tmp_path}/{name}")
        parquet.close()
        return file

    few = source("few.parquet", 0, g)  # (pyarrow's defaults: dictionary pages)
    whole = source("whole.parquet", g, g, **materialize.write_options("zstd"))
    rest = source("rest.parquet", 2 * g, g)
    out = materialize.materialize_group(storage, PartitionKey(), 0, [
        materialize.SourceRows(0, few, {0: RowSet.of(np.arange(g - 5, g))}),
        materialize.SourceRows(1, whole, {0: RowSet.of(np.arange(g))}),
        materialize.SourceRows(2, rest, {0: RowSet.of(np.arange(g - 1))})],
        SCHEMA, rows_per_file=10 * g, codec="zstd")
    assert out.rows_copied == g
    meta = pq.read_metadata(storage.fs.open(storage.strip(out.written[0][0].url), "rb"))
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5, g, g - 1]
    for i in (0, 2):
        assert "RLE_DICTIONARY" in meta.row_group(i).column(1).encodings


@pytest.mark.parametrize("rows, options", [
    (materialize.ROW_GROUP_ROWS + 1, {}),  # larger than the writer's row groups
    (materialize.ROW_GROUP_ROWS, {"write_statistics": False}),  # no statistics
])
def test_row_groups_the_writer_would_not_make_are_written_anew(tmp_path: Path, rows: int,
                                                               options: dict) -> None:
    """A source stored as the table's files but for its row groups' size or statistics: kept
    whole, its row groups are decoded and written as the writer's (with statistics, of at most
    ROW_GROUP_ROWS rows), not copied."""
    storage = Storage(f"file://{tmp_path}")
    ids = np.arange(rows, dtype=np.int64)
    table = pa.table({"id": ids, "v": [f"v{i % 97}" for i in ids]}, schema=SCHEMA)
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=rows,
                   **{**materialize.write_options("zstd"), **options})
    file, parquet = files.describe(storage, f"file://{tmp_path}/s.parquet")
    parquet.close()
    out = materialize.materialize_group(
        storage, PartitionKey(), 0, [materialize.SourceRows(1, file, {0: RowSet.of(ids)})],
        SCHEMA, rows_per_file=10 * rows, codec="zstd")
    assert out.rows_copied == 0
    path = storage.strip(out.written[0][0].url)
    meta = pq.read_metadata(storage.fs.open(path, "rb"))
    assert all(meta.row_group(i).num_rows <= materialize.ROW_GROUP_ROWS and
               meta.row_group(i).column(0).is_stats_set for i in range(meta.num_row_groups))
    assert pq.read_table(storage.fs.open(path, "rb")).equals(table)


def test_a_cdc_source_is_never_copied(tmp_path: Path) -> None:
    """A CDC source's op column may share a name with a table column: its row groups are
    decoded without it, even where they are stored as the table's files are."""
    g = materialize.ROW_GROUP_ROWS
    schema = pa.schema([("id", pa.int64()), ("op", pa.string())])
    storage = Storage(f"file://{tmp_path}")
    pq.write_table(pa.table({"id": np.arange(g, dtype=np.int64), "op": ["I"] * g},
                            schema=schema), tmp_path / "cdc.parquet", row_group_size=g,
                   **materialize.write_options("zstd"))
    file, parquet = files.describe(storage, f"file://{tmp_path}/cdc.parquet")
    parquet.close()
    out = materialize.materialize_group(
        storage, PartitionKey(), 0,
        [materialize.SourceRows(1, file, {0: RowSet.of(np.arange(g))}, op_column="op")],
        schema, rows_per_file=10 * g, codec="zstd")
    assert out.rows_copied == 0
    back = pq.read_table(storage.fs.open(storage.strip(out.written[0][0].url), "rb"))
    assert back.column("op").null_count == g


def test_a_copy_is_of_the_version_of_the_source_that_was_verified(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """The source is replaced after it was opened (verified): the row groups copied are the
    opened version's bytes, as the decoded rows are (they were fetched again by name)."""
    g = materialize.ROW_GROUP_ROWS
    storage, file = _compacted(tmp_path, 2 * g, "zstd")
    real = materialize._copies

    def replaced_after_open(opened, *args):  # type: ignore[no-untyped-def]
        newer = pa.table({"id": np.arange(2 * g, dtype=np.int64) + 10**9,
                          "v": ["new"] * (2 * g)}, schema=SCHEMA)
        pq.write_table(newer, tmp_path / "newer.parquet", row_group_size=g,
                       **materialize.write_options("zstd"))
        (tmp_path / "newer.parquet").replace(tmp_path / "c.parquet")
        return real(opened, *args)

    monkeypatch.setattr(materialize, "_copies", replaced_after_open)
    keep = np.arange(g, 2 * g)
    out = materialize.materialize_group(
        storage, PartitionKey(), 0, [materialize.SourceRows(1, file, {0: RowSet.of(keep)})],
        SCHEMA, rows_per_file=10 * g, codec="zstd")
    assert out.rows_copied == g
    back = pq.read_table(storage.fs.open(storage.strip(out.written[0][0].url), "rb"))
    assert back.column("id").to_numpy().tolist() == keep.tolist()


def test_a_source_that_cannot_be_copied_has_no_footer_parsed(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Row groups kept whole but stored with another codec: decided from pyarrow's reading of
    the footer (parsing a footer of many row groups in Python took longer than the rows)."""
    g = materialize.ROW_GROUP_ROWS
    storage, file = _compacted(tmp_path, 2 * g, "snappy")

    real = parquet_splice.footer_of

    def not_the_sources(read, size: int):  # type: ignore[no-untyped-def]
        assert size != file.size, "the source's footer was parsed"
        return real(read, size)  # (the template's)

    monkeypatch.setattr(parquet_splice, "footer_of", not_the_sources)
    out = materialize.materialize_group(
        storage, PartitionKey(), 0,
        [materialize.SourceRows(1, file, {0: RowSet.of(np.arange(2 * g))})],
        SCHEMA, rows_per_file=10 * g, codec="zstd")
    assert out.rows_copied == 0 and out.rows_written == 2 * g


def _values(depth: int) -> st.SearchStrategy[tuple[int, object]]:
    """(type, value) pairs of every kind the compact protocol has, nested ``depth`` deep."""
    ints = st.one_of(st.tuples(st.just(tc.I16), st.integers(-(2**15), 2**15 - 1)),
                     st.tuples(st.just(tc.I32), st.integers(-(2**31), 2**31 - 1)),
                     st.tuples(st.just(tc.I64), st.integers(-(2**63), 2**63 - 1)),
                     st.tuples(st.just(tc.BYTE), st.integers(-128, 127)),
                     st.tuples(st.just(tc.DOUBLE), st.floats(allow_nan=False)),
                     st.tuples(st.just(tc.BINARY), st.binary(max_size=40)))
    if depth == 0:
        return ints
    inner = _values(depth - 1)
    lists = st.sampled_from([tc.I32, tc.I64, tc.BINARY]).flatmap(lambda t: st.tuples(
        st.just(tc.LIST), st.lists(_of(t), max_size=20).map(lambda xs: tc.Sequence(t, xs))))
    maps = st.tuples(st.just(tc.MAP), st.lists(st.tuples(_of(tc.BINARY), _of(tc.I32)),
                                               max_size=4).map(
        lambda kv: tc.Mapping(tc.BINARY, tc.I32, kv) if kv else tc.Mapping(0, 0, [])))
    return st.one_of(ints, lists, maps, st.tuples(st.just(tc.STRUCT), _structs(inner)))


def _of(t: int) -> st.SearchStrategy[object]:
    return {tc.I32: st.integers(-(2**31), 2**31 - 1), tc.I64: st.integers(-(2**63), 2**63 - 1),
            tc.BINARY: st.binary(max_size=10)}[t]


def _structs(values: st.SearchStrategy[tuple[int, object]]) -> st.SearchStrategy[tc.Struct]:
    fields = st.lists(st.one_of(values, st.tuples(st.just(tc.TRUE), st.booleans())), max_size=8)
    ids = st.lists(st.integers(1, 40), min_size=8, max_size=8, unique=True).map(sorted)
    return st.tuples(ids, fields).map(lambda p: tc.Struct(
        [[fid, t, v] for fid, (t, v) in zip(p[0], p[1], strict=False)]))


@settings(max_examples=300, deadline=None)
@given(value=_structs(_values(2)), cut=st.integers(0, 10_000), flips=st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3))
def test_the_codec_reads_back_what_it_writes_and_damage_is_a_thrift_error(
        value: tc.Struct, cut: int, flips: list[tuple[int, int]]) -> None:
    """Every kind of value, nested, round-trips; the bytes cut short or with bytes changed
    read as some struct or raise ThriftError, never another error."""
    data = tc.dumps(value)
    assert tc.loads(data) == value
    assert tc.loads(memoryview(data).cast("b")) == value  # (pyarrow's views are signed)
    damaged = bytearray(data[:cut % (len(data) + 1)])
    for at, byte in flips:
        if damaged:
            damaged[at % len(damaged)] = byte
    try:
        tc.loads(bytes(damaged))
    except tc.ThriftError:
        pass
