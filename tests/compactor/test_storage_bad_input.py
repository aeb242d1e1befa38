"""Bad input: one clear line naming the thing at fault, and nothing committed.

Each case starts from a partition holding one good delta, attempts one bad write, and checks the
error's type and message, that the message is a single line, and that neither the partition's
commit log nor the table's metadata moved and no file appeared under the table root.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compactor import (
    CdcOps,
    CompactorError,
    CorruptFile,
    DeltaKind,
    EmptyDelta,
    ForeignFile,
    MissingColumn,
    MissingFile,
    NullKey,
    NullValue,
    Partition,
    SchemaMismatch,
    UnknownOp,
    UnknownPartition,
)
from tests.compactor._storage import (
    SCHEMA,
    export_url,
    files_under,
    new_table,
    write_bytes,
    write_parquet,
)


def _parquet_bytes(data: dict[str, list[object]], **kwargs: object) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(data), buf, **kwargs)
    return buf.getvalue()


GOOD = _parquet_bytes({"id": [1, 2, 3], "v": ["a", "b", "c"]})


@dataclass(frozen=True)
class Case:
    error: type[CompactorError]
    # builds the bad input beside the table; returns (action, words the message must contain)
    setup: Callable[[Partition, str], tuple[Callable[[], object], list[str]]]


def _register_bytes(data: bytes, **kwargs: Any) -> Callable[..., tuple[Callable[[], object],
                                                                          list[str]]]:
    def setup(part: Partition, root: str) -> tuple[Callable[[], object], list[str]]:
        url = write_bytes(export_url(root), data)
        return (lambda: part.register([url], **kwargs)), [url]
    return setup


def _missing(part: Partition, root: str) -> tuple[Callable[[], object], list[str]]:
    url = export_url(root)
    return (lambda: part.register([url])), [url, "does not exist"]


def _directory(part: Partition, root: str) -> tuple[Callable[[], object], list[str]]:
    url = write_bytes(export_url(root) + "/inside", GOOD).rsplit("/", 1)[0]
    return (lambda: part.register([url])), [url, "directory"]


def _one_bad_among_good(part: Partition, root: str) -> tuple[Callable[[], object], list[str]]:
    good = write_bytes(export_url(root), GOOD)
    bad = write_bytes(export_url(root), b"PAR1 but not parquet")
    return (lambda: part.register([good, bad, good])), [bad, "not valid Parquet"]


def _appended(data: pa.Table, **kwargs: Any) -> Callable[..., tuple[Callable[[], object],
                                                                       list[str]]]:
    def setup(part: Partition, root: str) -> tuple[Callable[[], object], list[str]]:
        return (lambda: part.append(data, **kwargs)), ["appended data for partition default"]
    return setup


def _foreign(part: Partition, root: str) -> tuple[Callable[[], object], list[str]]:
    url = "http://127.0.0.1:9/x.parquet"
    return (lambda: part.register([url])), [url, "not on the table's filesystem"]


CASES = {
    "missing file": Case(MissingFile, _missing),
    "directory, not a file": Case(MissingFile, _directory),
    "garbage bytes": Case(CorruptFile, _register_bytes(b"definitely not parquet" * 10)),
    "empty file": Case(CorruptFile, _register_bytes(b"")),
    "truncated parquet": Case(CorruptFile, _register_bytes(GOOD[: len(GOOD) // 2])),
    "wrong magic bytes": Case(CorruptFile, _register_bytes(GOOD[:-4] + b"PAR2")),
    "one corrupt file among good ones": Case(CorruptFile, _one_bad_among_good),
    "missing key column": Case(MissingColumn, _register_bytes(_parquet_bytes({"v": ["a"]}))),
    "missing key column, appended": Case(MissingColumn, _appended(pa.table({"v": ["a"]}))),
    "null key": Case(NullKey, _register_bytes(_parquet_bytes({"id": [1, None, 3]}))),
    "null key in a later row group": Case(NullKey, _register_bytes(_parquet_bytes(
        {"id": [1, 2, 3, 4, None, 6, 7]}, row_group_size=2))),
    "null key, appended": Case(NullKey, _appended(pa.table({"id": [5, None], "v": ["a", "b"]}))),
    "incompatible type": Case(SchemaMismatch, _register_bytes(_parquet_bytes(
        {"id": ["1"], "v": ["a"]}))),
    "incompatible type, appended": Case(SchemaMismatch, _appended(
        pa.table({"id": [1], "v": [True]}))),
    "unknown cdc op": Case(UnknownOp, _register_bytes(_parquet_bytes(
        {"Op": ["I", "X"], "id": [1, 2], "v": ["a", "b"]}), kind=DeltaKind.CDC)),
    "null cdc op": Case(UnknownOp, _appended(pa.table(
        {"Op": ["I", None], "id": [1, 2], "v": ["a", "b"]}), kind=DeltaKind.CDC)),
    "cdc op column of the wrong type": Case(UnknownOp, _appended(pa.table(
        {"Op": [1], "id": [1], "v": ["a"]}), kind=DeltaKind.CDC)),
    "cdc without op column": Case(MissingColumn, _register_bytes(GOOD, kind=DeltaKind.CDC,
                                                                 cdc=CdcOps("change"))),
    "zero rows": Case(EmptyDelta, _register_bytes(_parquet_bytes(
        {"id": pa.array([], pa.int64()), "v": pa.array([], pa.string())}))),
    "zero rows, appended": Case(EmptyDelta, _appended(SCHEMA.empty_table())),
    "no files": Case(EmptyDelta, lambda part, root: ((lambda: part.register([])),
                                                     ["no files to register"])),
    "file on another filesystem": Case(ForeignFile, _foreign),
}

EXPECTED_DETAIL = {
    "missing key column": ["missing column 'id' (upsert delta)"],
    "missing key column, appended": ["missing column 'id'"],
    "null key": ["null in key column 'id' at row 1"],
    "null key in a later row group": ["null in key column 'id' at row 4"],
    "null key, appended": ["null in key column 'id' at row 1"],
    "incompatible type": ["column 'id' changes type from int64 (table) to string"],
    "incompatible type, appended": ["column 'v' changes type from string (table) to bool"],
    "unknown cdc op": ["op column 'Op' holds 'X' at row 1; expected one of ['I', 'U', 'D']"],
    "null cdc op": ["op column 'Op' holds None at row 1"],
    "cdc op column of the wrong type": ["op column 'Op' has type int64"],
    "cdc without op column": ["missing column 'change' (cdc delta)"],
    "zero rows": ["hold no rows"],
    "zero rows, appended": ["no rows"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_clearly_and_commits_nothing(table_root: str, name: str) -> None:
    case = CASES[name]
    table = new_table(table_root)
    part = table.partition()
    part.append(pa.table({"id": [1], "v": ["x"]}, schema=SCHEMA))
    action, words = case.setup(part, table_root)
    before = files_under(table_root)

    with pytest.raises(case.error) as e:
        action()

    message = str(e.value)
    assert "\n" not in message
    for word in [*words, *EXPECTED_DETAIL.get(name, [])]:
        assert word in message
    assert part.version() == 1
    assert table.refresh().version == 1
    assert files_under(table_root) == before


def test_missing_not_nullable_column(table_root: str) -> None:
    schema = pa.schema([("id", pa.int64()), pa.field("v", pa.string(), nullable=False)])
    part = new_table(table_root, schema).partition()
    with pytest.raises(MissingColumn, match=r"appended data .*: missing column 'v'"):
        part.append(pa.table({"id": [1]}))
    assert part.append(pa.table({"id": [1]}), kind=DeltaKind.DELETE).position == 1


def test_a_null_in_a_not_nullable_column_of_an_upserted_row_is_refused(table_root: str
                                                                         ) -> None:
    """A not-nullable non-key column may not hold a null where a delta upserts a row (it was
    accepted, then every round of the partition failed writing it); a CDC delete row's other
    columns, which are never written, may."""
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False),
                        pa.field("v", pa.string(), nullable=False), ("w", pa.int64())])
    table = new_table(table_root, schema)
    part = table.partition()
    part.append(pa.table({"id": [1], "v": ["x"], "w": [1]}, schema=schema))
    before = files_under(table_root)
    with pytest.raises(NullValue, match=r"^appended data .*: null at row 1 in column 'v', which "
                                        r"the table declares not nullable$"):
        part.append(pa.table({"id": [5, 6], "v": ["a", None], "w": [1, 2]}))
    url = write_parquet(export_url(table_root), {"id": [1, 2, 3, 4, 5], "w": [0] * 5,
                                                 "v": ["a", "b", "c", None, "e"]},
                        row_group_size=2)
    with pytest.raises(NullValue, match=f"^file {url}: null at row 3 in column 'v'"):
        part.register([url])
    cdc = pa.table({"op": ["I", "D", "U"], "id": [7, 1, 8], "v": ["a", None, None], "w": [0] * 3})
    with pytest.raises(NullValue, match="null at row 2 in column 'v'"):  # an update: refused
        part.append(cdc, kind=DeltaKind.CDC, cdc=CdcOps("op"))
    assert part.version() == 1 and files_under(table_root) == before
    # a delete row without its before-image, and nulls where the table allows them
    assert part.append(cdc.slice(0, 2), kind=DeltaKind.CDC, cdc=CdcOps("op")).position == 2
    assert part.append(pa.table({"id": [9], "v": ["z"], "w": [None]}, schema=schema)
                       ).position == 3


def test_unknown_partition(table_root: str) -> None:
    table = new_table(table_root, partition_by=["day"])
    table.partition({"day": "d1"}).append(pa.table({"id": [1], "v": ["x"]}, schema=SCHEMA))
    absent = table.partition({"day": "d9"})
    with pytest.raises(UnknownPartition, match=f"partition day=d9 of {table_root} has no "
                                               "commits"):
        absent.snapshot()
    with pytest.raises(UnknownPartition, match="day=d9"):
        absent.deltas()
    with pytest.raises(UnknownPartition, match=r"day=d1 in .* has no commit 5 \(newest is 1\)"):
        table.partition({"day": "d1"}).snapshot(version=5)
    assert absent.version() == 0
    assert [p.values for p in table.partitions()] == [{"day": "d1"}]


def test_corrupt_commit_file_is_named(table_root: str) -> None:
    table = new_table(table_root)
    part = table.partition()
    part.append(pa.table({"id": [1], "v": ["x"]}, schema=SCHEMA))
    table.storage.create(f"{part.key.dir}/_log/00000000000000000002.json", b"{not json")
    with pytest.raises(CorruptFile, match=r"00000000000000000002\.json: not a valid commit file"):
        part.snapshot()


def test_errors_cross_process_boundaries() -> None:
    import pickle

    import compactor.errors as errors

    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.CompactorError)]
    assert len(classes) >= 15
    for cls in classes:
        clone = pickle.loads(pickle.dumps(cls("partition day=d1 of s3://b/t: something")))
        assert type(clone) is cls
        assert str(clone) == "partition day=d1 of s3://b/t: something"
