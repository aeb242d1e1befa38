"""The dedupe kernel against the merge rule, stated once in ``Reference`` as plain Python.

``Reference`` keeps, per key, the greatest record ever seen (deletes included) — the rule over all
input, not an index. ``merge`` only sees its index and a round's records, so agreement after
every round is what shows that the index (with its tombstones) carries everything needed.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from decimal import Decimal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compactor.merge as merge_module
from compactor.merge import (
    INDEXED_POS,
    OP_DELETE,
    OP_UPSERT,
    MergeInputError,
    MergeResult,
    empty_index,
    index_schema,
    merge,
    record_schema,
    surviving_rows,
)
from compactor.pipeline.hash_bucket import GroupRecords, HashOutput
from compactor.pipeline.sliced_merge import merge_in_slices, slice_edges

Key = tuple[int, int]


@dataclass(frozen=True)
class Rec:
    hi: int
    lo: int
    order: object
    pos: int
    file: int
    row: int
    op: int = OP_UPSERT

    @property
    def key(self) -> Key:
        return (self.hi, self.lo)

    def version(self) -> tuple[object, ...]:
        return (_order_rank(self.order), self.pos, self.file, self.row)


def _order_rank(v: object) -> tuple[object, ...]:
    """The documented order rule: null lowest, NaN above every number, -0.0 == 0.0."""
    if v is None:
        return (0,)
    if isinstance(v, float):
        return (1, 1, 0.0) if math.isnan(v) else (1, 0, v + 0.0)
    return (1, 0, v)


class Reference:
    def __init__(self) -> None:
        self.best: dict[Key, Rec] = {}

    def add(self, records: list[Rec]) -> None:
        for r in records:
            current = self.best.get(r.key)
            if current is None or r.version() > current.version():
                self.best[r.key] = r

    def live(self) -> dict[Key, Rec]:
        return {k: r for k, r in self.best.items() if r.op == OP_UPSERT}


def _table(records: list[Rec], order_type: pa.DataType | None) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "hi": pa.array([r.hi for r in records], pa.uint64()),
        "lo": pa.array([r.lo for r in records], pa.uint64()),
    }
    if order_type is not None:
        columns["order"] = pa.array([r.order for r in records], order_type)
    for name, type_ in (("pos", pa.int64()), ("file", pa.int32()), ("row", pa.int32()),
                        ("op", pa.int8())):
        columns[name] = pa.array([getattr(r, name) for r in records], type_)
    return pa.table(columns, schema=record_schema(order_type))


def _records(index: pa.Table) -> list[Rec]:
    if "order" in index.column_names and pa.types.is_timestamp(index.schema.field("order").type):
        # Back to the integers the test wrote (datetime would drop no precision, but compare
        # unequal to them).
        at = index.column_names.index("order")
        index = index.set_column(at, "order", index.column("order").cast(pa.int64()))
    rows = index.to_pylist()
    return [Rec(r["hi"], r["lo"], r.get("order"), r.get("pos", INDEXED_POS), r["file"], r["row"],
                r["op"]) for r in rows]


def _same(a: Rec, b: Rec) -> bool:
    """The same record (an index keeps no ``pos``: ``file`` and ``row`` say which record an
    entry is); NaN orders compare equal to each other."""
    return (_order_rank(a.order), a.file, a.row) == (_order_rank(b.order), b.file, b.row) \
        and a.key == b.key and a.op == b.op


def check_round(reference: Reference, before: dict[Key, Rec], result: MergeResult,
                records: list[Rec], ordered: bool) -> None:
    index = _records(result.index)
    keys = [r.key for r in index]
    assert keys == sorted(set(keys)), "index must be sorted by (hi, lo) with one row per key"
    live = {r.key: r for r in index if r.op == OP_UPSERT}
    expected = reference.live()
    assert live.keys() == expected.keys()
    assert all(_same(live[k], expected[k]) for k in live)
    tombstones = {r.key for r in index if r.op == OP_DELETE}
    if ordered:
        assert tombstones == {k for k, r in reference.best.items() if r.op == OP_DELETE}
    else:
        assert not tombstones
    changed = {k for k in before if k not in live or not _same(live[k], before[k])}
    assert result.inserted == len(live.keys() - before.keys())
    assert result.deleted == len(before.keys() - live.keys())
    assert result.updated == len(changed & live.keys())
    winners = {k for k, r in reference.best.items() if any(r is x for x in records)}
    assert result.duplicates_dropped == len(records) - len(winners)
    assert result.records_in == len(records)
    assert result.superseded_files.tolist() == sorted({before[k].file for k in changed})
    assert sorted(result.superseded.tolist()) == sorted(
        before[k].file << 32 | before[k].row for k in changed)


ORDER_VALUES: dict[str, tuple[pa.DataType | None, st.SearchStrategy[object]]] = {
    "none": (None, st.none()),
    "int64": (pa.int64(), st.one_of(st.none(), st.integers(-2, 2))),
    "float64": (pa.float64(), st.sampled_from(
        [None, -math.inf, -1.5, -0.0, 0.0, 2.0, math.inf, math.nan])),
    "string": (pa.string(), st.sampled_from([None, "", "a", "ab", "b", "ü"])),
    "timestamp": (pa.timestamp("us", "UTC"), st.one_of(st.none(), st.integers(-1, 2))),
    "decimal": (pa.decimal128(5, 2), st.sampled_from(
        [None, Decimal("-1.5"), Decimal("0"), Decimal("0.01"), Decimal("2")])),
}
# Few keys, so rounds collide; hi values that tie in their top bits and tie exactly with
# different lo exercise the rare paths of sorting and lookup.
HI = st.sampled_from([0, 1, 2, 3, 2**63, 2**64 - 1])
LO = st.sampled_from([0, 1, 7])


@st.composite
def rounds(draw: st.DrawFn, order_values: st.SearchStrategy[object],
           hi_values: st.SearchStrategy[int] = HI) -> list[list[Rec]]:
    result = []
    for r in range(draw(st.integers(1, 4))):
        spec = draw(st.lists(st.tuples(hi_values, LO, order_values, st.booleans(),
                                       st.integers(0, 1), st.integers(0, 2)), max_size=25))
        next_row: dict[int, int] = {}
        records = []
        for hi, lo, order, delete, delta, file in spec:
            ordinal = 10 * r + 3 * delta + file  # each delta has its own files
            row = next_row.get(ordinal, 0)
            next_row[ordinal] = row + 1
            records.append(Rec(hi, lo, order, 10 * r + delta, ordinal, row,
                               OP_DELETE if delete else OP_UPSERT))
        result.append(draw(st.permutations(records)))  # arrival order must not matter
    return result


@pytest.mark.parametrize("order_kind", list(ORDER_VALUES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_merge_matches_reference_round_after_round(order_kind: str, data: st.DataObject) -> None:
    order_type, values = ORDER_VALUES[order_kind]
    reference = Reference()
    index = empty_index(order_type)
    for records in data.draw(rounds(values)):
        before = {r.key: r for r in _records(index) if r.op == OP_UPSERT}
        result = merge(index, _table(records, order_type))
        reference.add(records)
        check_round(reference, before, result, records, ordered=order_type is not None)
        check_changes(_records(index), result)
        index = result.index


def check_changes(before: list[Rec], result: MergeResult) -> None:
    """``entered`` and ``gone_*`` are exactly the difference between the two indexes."""
    after = _records(result.index)
    old = {r.key: r for r in before}
    entered = [i for i, r in enumerate(after) if r.key not in old or not _same(r, old[r.key])]
    assert result.entered.tolist() == entered
    gone = sorted(old.keys() - {r.key for r in after})
    assert sorted(zip(result.gone_hi.tolist(), result.gone_lo.tolist(), strict=True)) == gone


# --- the rule, case by case ---------------------------------------------------------------------


INT64 = pa.int64()


def _merge_rounds(rounds_: list[list[Rec]], order_type: pa.DataType | None = INT64
                  ) -> MergeResult:
    index = empty_index(order_type)
    result = None
    for records in rounds_:
        result = merge(index, _table(records, order_type))
        index = result.index
    assert result is not None
    return result


def _live(result: MergeResult) -> dict[Key, tuple[object, int, int]]:
    """Live keys: (order, file, row) of their entries."""
    return {r.key: (r.order, r.file, r.row) for r in _records(result.index)
            if r.op == OP_UPSERT}


def test_duplicates_within_one_delta_keep_the_last_row() -> None:
    result = _merge_rounds([[Rec(1, 1, None, 1, 0, 0), Rec(1, 1, None, 1, 0, 2),
                             Rec(1, 1, None, 1, 0, 1)]], None)
    assert _live(result) == {(1, 1): (None, 0, 2)}
    assert (result.inserted, result.duplicates_dropped) == (1, 2)


def test_ties_break_by_position_then_file_then_row() -> None:
    rows = [Rec(1, 1, 5, 2, 0, 9), Rec(1, 1, 5, 1, 7, 9)]
    assert _live(_merge_rounds([rows]))[(1, 1)] == (5, 0, 9)
    rows = [Rec(1, 1, 5, 2, 3, 0), Rec(1, 1, 5, 2, 2, 9)]
    assert _live(_merge_rounds([rows]))[(1, 1)] == (5, 3, 0)


def test_delete_of_an_absent_key_changes_nothing() -> None:
    result = _merge_rounds([[Rec(1, 1, None, 1, 0, 0)], [Rec(2, 2, None, 2, 1, 0, OP_DELETE)]],
                           None)
    assert _live(result) == {(1, 1): (None, 0, 0)}
    assert (result.deleted, result.superseded_files.tolist()) == (0, [])


def test_reinsert_after_delete() -> None:
    result = _merge_rounds([[Rec(1, 1, None, 1, 0, 0)], [Rec(1, 1, None, 2, 1, 0, OP_DELETE)],
                            [Rec(1, 1, None, 3, 2, 0)]], None)
    assert _live(result) == {(1, 1): (None, 2, 0)}
    assert result.inserted == 1


def test_ordering_column_beats_arrival() -> None:
    first = _merge_rounds([[Rec(1, 1, 10, 1, 0, 0)]])
    late = merge(first.index, _table([Rec(1, 1, 5, 2, 1, 0)], pa.int64()))
    assert _live(late) == {(1, 1): (10, 0, 0)}
    assert (late.updated, late.duplicates_dropped, late.superseded_files.tolist()) == (0, 1, [])


def test_a_late_older_upsert_does_not_resurrect_a_deleted_key() -> None:
    result = _merge_rounds([[Rec(1, 1, 10, 1, 0, 0)], [Rec(1, 1, 20, 2, 1, 0, OP_DELETE)],
                            [Rec(1, 1, 15, 3, 2, 0)]])
    assert _live(result) == {}
    assert [r.op for r in _records(result.index)] == [OP_DELETE]  # the tombstone
    newer = merge(result.index, _table([Rec(1, 1, 21, 4, 3, 0)], pa.int64()))
    assert _live(newer) == {(1, 1): (21, 3, 0)}
    assert newer.inserted == 1


def test_null_order_is_lowest_and_nan_highest() -> None:
    result = _merge_rounds([[Rec(1, 1, None, 9, 0, 0), Rec(1, 1, -math.inf, 1, 1, 0),
                             Rec(2, 2, math.inf, 9, 2, 0), Rec(2, 2, math.nan, 1, 3, 0)]],
                           pa.float64())
    live = _live(result)
    assert live[(1, 1)][1:] == (1, 0)
    assert live[(2, 2)][1:] == (3, 0)


def test_string_orders_compare_across_index_and_incoming() -> None:
    first = _merge_rounds([[Rec(1, 1, "b", 1, 0, 0), Rec(2, 2, "a", 1, 0, 1)]], pa.string())
    second = merge(first.index, _table([Rec(1, 1, "ab", 2, 1, 0), Rec(2, 2, "ab", 2, 1, 1)],
                                       pa.string()))
    assert _live(second) == {(1, 1): ("b", 0, 0), (2, 2): ("ab", 1, 1)}
    assert second.superseded_files.tolist() == [0]


def test_keys_are_both_words_of_the_digest() -> None:
    result = _merge_rounds([[Rec(5, 1, None, 1, 0, 0), Rec(5, 2, None, 1, 0, 1),
                             Rec(6, 1, None, 1, 0, 2)]], None)
    assert set(_live(result)) == {(5, 1), (5, 2), (6, 1)}


def test_order_types_are_unified_between_index_and_records() -> None:
    first = _merge_rounds([[Rec(1, 1, 10, 1, 0, 0)]], pa.int32())
    second = merge(first.index, _table([Rec(1, 1, 2**40, 2, 1, 0)], pa.int64()))
    assert second.index.schema.field("order").type == pa.int64()
    assert _live(second) == {(1, 1): (2**40, 1, 0)}


@pytest.mark.parametrize(("order_type", "low", "high"), [
    (pa.bool_(), False, True),
    (pa.uint64(), 2**63, 2**64 - 1),
    (pa.date32(), 0, 1),
    (pa.binary(), b"a", b"a\0"),
])
def test_other_order_types(order_type: pa.DataType, low: object, high: object) -> None:
    rows = [Rec(1, 1, high, 1, 0, 0), Rec(1, 1, low, 2, 0, 1), Rec(2, 2, None, 2, 0, 2),
            Rec(2, 2, low, 1, 0, 3)]
    live = _live(_merge_rounds([rows], order_type))
    assert {k: v[1:] for k, v in live.items()} == {(1, 1): (0, 0), (2, 2): (0, 3)}


def test_dictionary_orders_are_decoded_and_empty_index_adopts_the_order_type() -> None:
    records = _table([Rec(1, 1, "b", 1, 0, 0), Rec(1, 1, "a", 2, 0, 1)], pa.string())
    encoded = records.set_column(2, "order", records.column("order").dictionary_encode())
    result = merge(empty_index(), encoded)
    assert result.index.schema.field("order").type == pa.string()
    assert _live(result) == {(1, 1): ("b", 0, 0)}


def test_uncomparable_order_type() -> None:
    records = _table([Rec(1, 1, None, 1, 0, 0), Rec(1, 1, None, 2, 0, 1)], None)
    records = records.add_column(2, "order", pa.array([[1], [2]]))
    with pytest.raises(MergeInputError, match="ordering values of type list"):
        merge(empty_index(), records)


def test_index_is_unchanged_and_result_pickles() -> None:
    first = _merge_rounds([[Rec(1, 1, 3, 1, 0, 0)]])
    before = first.index.to_pylist()
    second = merge(first.index, _table([Rec(1, 1, 4, 2, 1, 0, OP_DELETE)], pa.int64()))
    assert first.index.to_pylist() == before
    revived = pickle.loads(pickle.dumps(second))
    assert revived.index.equals(second.index)
    assert revived.superseded_files.tolist() == [0]
    assert second.index.schema == index_schema(pa.int64())  # records without pos
    assert index_schema(pa.int64()).names == [n for n in record_schema(pa.int64()).names
                                              if n != "pos"]


def test_exact_sort_without_packing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge_module, "_MAX_PACKED_ROW_BITS", 0)
    records = [Rec(h, lo, None, 1, 0, i) for i, (h, lo) in
               enumerate([(3, 1), (1, 2), (3, 1), (1, 1), (2**64 - 1, 0), (1, 2)])]
    result = _merge_rounds([records], None)
    assert [r.key for r in _records(result.index)] == [(1, 1), (1, 2), (3, 1), (2**64 - 1, 0)]
    assert result.duplicates_dropped == 2


# --- bad input ----------------------------------------------------------------------------------


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def test_bad_input_is_refused_clearly() -> None:
    good = _table([Rec(1, 1, None, 1, 0, 0)], None)
    with pytest.raises(MergeInputError, match=r"lack column\(s\) \['op'\]"):
        merge(empty_index(), good.drop_columns(["op"]))
    with pytest.raises(MergeInputError, match="op must be"):
        merge(empty_index(), _replace(good, "op", pa.array([3], pa.int8())))
    with pytest.raises(MergeInputError, match="'pos' has nulls"):
        merge(empty_index(), _replace(good, "pos", pa.array([None], pa.int64())))
    with pytest.raises(MergeInputError, match="repeat a"):
        merge(empty_index(), _table([Rec(1, 1, None, 1, 0, 0)] * 2, None))
    ordered = _merge_rounds([[Rec(1, 1, 1, 1, 0, 0)]])
    with pytest.raises(MergeInputError, match="only the index have an ordering column"):
        merge(ordered.index, good)
    with pytest.raises(MergeInputError, match="incompatible"):
        merge(ordered.index, _table([Rec(1, 1, "x", 2, 1, 0)], pa.string()))


# --- surviving rows -----------------------------------------------------------------------------


def test_surviving_rows_per_file_sorted_and_without_tombstones() -> None:
    records = [Rec(k, 0, 1, 1, f, r) for k, (f, r) in
               enumerate([(2, 5), (0, 3), (2, 1), (0, 0), (1, 7)])]
    records.append(Rec(99, 0, 1, 1, 4, 0, OP_DELETE))  # a tombstone
    index = _merge_rounds([records]).index
    assert {f: r.tolist() for f, r in surviving_rows(index).items()} == {
        0: [0, 3], 1: [7], 2: [1, 5]}
    assert {f: r.tolist() for f, r in surviving_rows(index, [2, 3]).items()} == {
        2: [1, 5], 3: []}


def test_surviving_rows_with_the_largest_row_numbers_and_unplaced_entries() -> None:
    top = 2**31 - 1  # rows are int32
    records = [Rec(1, 0, None, 1, 0, top), Rec(2, 0, None, 1, 0, 4), Rec(3, 0, None, 1, -1, 0)]
    index = _merge_rounds([records], None).index
    assert {f: r.tolist() for f, r in surviving_rows(index).items()} == {
        -1: [0], 0: [4, top]}


# --- at scale, against DuckDB -------------------------------------------------------------------


def _random_records(rng: np.random.Generator, n: int, keys: np.ndarray, pos: int,
                    first_file: int) -> pa.Table:
    k = rng.choice(keys, n)
    order = pa.array(rng.integers(0, 50, n), mask=rng.random(n) < 0.05)
    return pa.table({
        "hi": k, "lo": k ^ np.uint64(0x5555), "order": order,
        "pos": np.full(n, pos, np.int64),
        "file": (first_file + rng.integers(0, 4, n)).astype(np.int32),
        "row": np.arange(n, dtype=np.int64),
        "op": (rng.random(n) < 0.15).astype(np.int8),
    })


def test_many_rounds_at_scale_agree_with_duckdb() -> None:
    rng = np.random.default_rng(7)
    # Distinct keys whose hi share their top bits in clumps, so the exact re-sort runs too.
    keys = np.unique(rng.integers(0, 2**20, 60_000).astype(np.uint64) << np.uint64(44)
                     | rng.integers(0, 4, 60_000).astype(np.uint64))
    index = empty_index(pa.int64())
    seen = []
    db = duckdb.connect()
    for r in range(4):
        records = _random_records(rng, 100_000, keys, r + 1, 10 * r)
        index = merge(index, records).index
        seen.append(records)
        db.register("everything", pa.concat_tables(seen))
        expected = db.sql("""
            SELECT hi, lo, "order", file, row FROM everything
            QUALIFY row_number() OVER (PARTITION BY hi, lo
                ORDER BY "order" DESC NULLS LAST, pos DESC, file DESC, row DESC) = 1
                AND op = 0
            ORDER BY hi, lo
        """).to_arrow_table()
        live = index.filter(pc.equal(index["op"], 0)).drop_columns(["op"])
        assert live.num_rows == expected.num_rows
        assert live.equals(expected.cast(live.schema))


# --- merging a range of keys at a time (the dedupe actors' way) ---------------------------------

SPREAD_HI = st.sampled_from([0, 1, 2**62, 2**62 + 1, 2**63, 3 * 2**62, 2**64 - 1])


def _runs(records: list[Rec], order_type: pa.DataType | None) -> list[HashOutput]:
    """Records as hash tasks emit them: one output per (delta, file), sorted by key, with
    ``pos`` and ``file`` once per output."""
    by_file: dict[tuple[int, int], list[Rec]] = {}
    for r in records:
        by_file.setdefault((r.pos, r.file), []).append(r)
    outputs = []
    for (pos, file), rs in sorted(by_file.items()):
        table = _table(sorted(rs, key=lambda r: r.key), order_type).drop_columns(["pos", "file"])
        outputs.append(HashOutput({0: table}, len(rs), 0, pos, file))
    return outputs


@pytest.mark.parametrize("order_kind", ["none", "int64", "float64", "string"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_merging_in_slices_matches_one_merge_and_the_reference(order_kind: str,
                                                               data: st.DataObject) -> None:
    order_type, values = ORDER_VALUES[order_kind]
    schema = record_schema(order_type)
    reference = Reference()
    index = empty_index(order_type)
    for records in data.draw(rounds(values, SPREAD_HI)):
        before = {r.key: r for r in _records(index) if r.op == OP_UPSERT}
        slice_records = data.draw(st.integers(1, 6))
        result = merge_in_slices(index, GroupRecords(_runs(records, order_type), 0), schema,
                                 0, 2**64, slice_records)
        whole = merge(index, _table(records, order_type))
        assert result.index.schema == whole.index.schema
        mine, theirs = _records(result.index), _records(whole.index)
        assert len(mine) == len(theirs)
        assert all(_same(a, b) for a, b in zip(mine, theirs, strict=True))  # NaN == NaN here
        assert result.entered.tolist() == whole.entered.tolist()
        assert result.superseded_files.tolist() == whole.superseded_files.tolist()
        assert sorted(result.superseded.tolist()) == sorted(whole.superseded.tolist())
        assert sorted(zip(result.gone_hi.tolist(), result.gone_lo.tolist(), strict=True)) == \
            sorted(zip(whole.gone_hi.tolist(), whole.gone_lo.tolist(), strict=True))
        assert all(result.columns[name].tolist() == result.index.column(name).to_pylist()
                   for name in ("hi", "lo", "file", "row"))
        reference.add(records)
        check_round(reference, before, result, records, ordered=order_type is not None)
        check_changes(_records(index), result)
        index = result.index


def test_slice_edges_cut_the_range_evenly() -> None:
    assert slice_edges(0, 2**64, 4).tolist() == [2**62, 2**63, 3 * 2**62]
    assert slice_edges(8, 16, 1).tolist() == []


@pytest.mark.parametrize("values", [
    pa.array([5, -3, 2**62, 0], pa.int64()),
    pa.array([1.5, float("nan"), -0.0, 2.0], pa.float32()),
    pa.array([0, 10**15, -1, 7], pa.timestamp("us", tz="UTC")),
    pa.array([1, None, 3, 4], pa.int32()),  # nulls: Arrow's take
    pa.array(["b", "", "éa", None]),
    pa.array([True, False, None, True]),
    pa.array([Decimal("1.5"), Decimal("-2"), None, Decimal("0")], pa.decimal128(10, 2)),
], ids=["int64", "float32", "timestamp-tz", "int32-nulls", "string", "bool", "decimal"])
def test_take_values_is_arrows_take(values: pa.Array) -> None:
    """``take_values`` (by numpy for fixed-width values without nulls) gives what Arrow's take
    gives, type and all, for any indices into the values (repeats, reversed, empty)."""
    from compactor.merge import gather, take_values

    for indices in ([3, 0, 0, 2, 1], [], [1, 1, 1], [3, 2, 1, 0]):
        positions = np.array(indices, dtype=np.int64)
        got = take_values(values, positions)
        expected = values.take(pa.array(positions, pa.int64()))
        assert got.type == values.type
        if pa.types.is_floating(values.type):  # (bit for bit: NaN equals nothing)
            got, expected = got.view(pa.int32()), expected.view(pa.int32())
        assert got.equals(expected)
    numbers = np.arange(10, 20)
    assert gather(numbers, np.array([9, 0, 4])).tolist() == [19, 10, 14]
