"""``LiveIndex.fold`` (an index updated in place) against ``compactor.merge.merge`` (a sorted copy).

``merge`` is checked against the merge rule itself in ``test_merge``; here it is the oracle: after
every round, the in-place index must describe exactly the index ``merge`` produces from the same
rounds, and report the same changes, although its entries sit in other places (replaced where
they are, gone ones marked, new ones appended).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from compactor.merge import (
    OP_DELETE,
    OP_GONE,
    OP_UPSERT,
    MergeInputError,
    MergeResult,
    empty_index,
    fixed_width,
    index_schema,
    merge,
    record_schema,
)
from compactor.pipeline.hash_bucket import GroupRecords, HashOutput
from compactor.pipeline.live_index import LiveIndex
from compactor.pipeline.sliced_merge import merge_in_slices

U64 = 2**64

# --- building records ---------------------------------------------------------------------------

# Ordering values are drawn as small integers (so they tie often and often disagree with arrival
# order) and turned into the column's type; floats map them onto values whose order is special
# (-0.0 equals 0.0, NaN above infinity).
FLOATS = np.array([-np.inf, -1.5, -0.0, 0.0, 0.5, 2.0, np.inf, np.nan])
ORDER_TYPES: dict[str, pa.DataType | None] = {
    "none": None,
    "int64": pa.int64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "float64": pa.float64(),
    "date32": pa.date32(),
    "uint64": pa.uint64(),  # values on both sides of 2**63: held as int64 bits
    "float32": pa.float32(),
}


def order_array(values: np.ndarray, order_type: pa.DataType) -> pa.Array:
    """Small integers as ordering values of ``order_type`` (same integer: same value)."""
    if pa.types.is_floating(order_type):
        return pa.array(FLOATS[values % len(FLOATS)].astype(order_type.to_pandas_dtype()),
                        order_type)
    if order_type == pa.uint64():
        return pa.array(values.astype(np.uint64) * np.uint64(3) + np.uint64(2**63 - 12))
    if order_type.bit_width == 32:
        return pa.array(values.astype(np.int32), pa.int32()).cast(order_type)
    return pa.array(values.astype(np.int64) * 1_000_003, pa.int64()).cast(order_type)


def records_table(hi, lo, order, pos, file, row, op, order_type: pa.DataType | None
                  ) -> pa.Table:
    columns = {"hi": pa.array(np.asarray(hi, np.uint64)), "lo": pa.array(np.asarray(lo, np.uint64))}
    if order_type is not None:
        columns["order"] = order_array(np.asarray(order), order_type)
    columns["pos"] = pa.array(np.asarray(pos, np.int64))
    columns["file"] = pa.array(np.asarray(file, np.int32))
    columns["row"] = pa.array(np.asarray(row, np.int32))
    columns["op"] = pa.array(np.asarray(op, np.int8))
    schema = record_schema(order_type)
    return pa.table([columns[f.name] for f in schema], schema=schema)


class Stream:
    """Rounds of key records for one table, each later in the stream than the ones before.

    Keys share ``hi`` often (a small pool of ``hi`` values, 0 and 2**64 - 1 among them, with
    random ``lo``), so lookups meet several candidates. A round mixes updates of live keys, new
    keys, deletes of live keys and of keys never seen, re-inserts and re-deletes of deleted keys,
    and several records of one key; its records come shuffled, its ordering values at random.
    """

    def __init__(self, rng: np.random.Generator, order_type: pa.DataType | None) -> None:
        self.rng = rng
        self.order_type = order_type
        pool = rng.integers(0, U64, size=24, dtype=np.uint64)
        self.hi_pool = np.unique(np.concatenate([pool, np.array([0, U64 - 1], np.uint64)]))
        self.seen: set[tuple[int, int]] = set()
        self.round = 0

    def fresh_key(self) -> tuple[int, int]:
        while True:
            if self.rng.random() < 0.8:
                hi = int(self.rng.choice(self.hi_pool))
            else:
                hi = int(self.rng.integers(0, U64, dtype=np.uint64))
            key = (hi, int(self.rng.integers(0, U64, dtype=np.uint64)))
            if key not in self.seen:
                return key

    def next_round(self, index: pa.Table, size: int, new_keys: int = 0) -> pa.Table:
        """``size`` records (plus ``new_keys`` upserts of new keys) against ``index``, the
        reference index of the stream so far."""
        rng = self.rng
        keys = list(zip(index.column("hi").to_pylist(), index.column("lo").to_pylist(),
                        strict=True))
        ops = index.column("op").to_pylist()
        live = [k for k, op in zip(keys, ops, strict=True) if op == OP_UPSERT]
        deleted = sorted(self.seen - set(live))  # gone (no ordering column) or tombstones
        chosen: list[tuple[tuple[int, int], int]] = []
        kinds = ["update", "new", "delete", "delete absent", "reinsert", "redelete", "again"]
        for kind in rng.choice(kinds, size=size, p=[0.3, 0.15, 0.15, 0.05, 0.15, 0.05, 0.15]):
            if kind in ("update", "delete") and live:
                key = live[rng.integers(len(live))]
            elif kind in ("reinsert", "redelete") and deleted:
                key = deleted[rng.integers(len(deleted))]
            elif kind == "again" and chosen:
                key = chosen[rng.integers(len(chosen))][0]
            else:
                key = self.fresh_key()
            delete = kind in ("delete", "delete absent", "redelete") or \
                (kind == "again" and rng.random() < 0.4)
            chosen.append((key, OP_DELETE if delete else OP_UPSERT))
            self.seen.add(key)
        for _ in range(new_keys):
            key = self.fresh_key()
            chosen.append((key, OP_UPSERT))
            self.seen.add(key)
        n = len(chosen)
        shuffled = [chosen[i] for i in rng.permutation(n)]
        base = 10 * (self.round + 1)  # every round later than all the ones before
        table = records_table(
            hi=[k[0] for k, _ in shuffled], lo=[k[1] for k, _ in shuffled],
            order=rng.integers(0, 12, size=n),
            pos=base + rng.integers(0, 3, size=n),
            file=4 * self.round + rng.integers(0, 4, size=n),
            row=np.arange(n),  # one locator per record
            op=[op for _, op in shuffled], order_type=self.order_type)
        self.round += 1
        if n > 2 and rng.random() < 0.3:  # several chunks, as records of several tasks come
            table = pa.concat_tables([table.slice(0, n // 2), table.slice(n // 2)])
        return table


# --- comparing ----------------------------------------------------------------------------------


def rows(table: pa.Table, positions: np.ndarray | None = None) -> list[tuple]:
    """The rows of ``table`` (at ``positions``) as tuples; fixed-width ordering values as the
    integers of their bits, so NaN equals NaN and -0.0 differs from 0.0."""
    if positions is not None:
        table = table.take(pa.array(np.asarray(positions, np.int64)))
    columns = []
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        width = fixed_width(column)
        if width is not None and not pa.types.is_integer(column.type):
            column = column.view(width)
        columns.append(column.to_pylist())
    return list(zip(*columns, strict=True))


def assert_same_index(actual: pa.Table, expected: pa.Table) -> None:
    assert actual.schema.equals(expected.schema), (actual.schema, expected.schema)
    assert rows(actual) == rows(expected)


def keys_of(hi: np.ndarray, lo: np.ndarray) -> list[tuple[int, int]]:
    return sorted(zip(np.asarray(hi).tolist(), np.asarray(lo).tolist(), strict=True))


def check_invariants(live: LiveIndex) -> None:
    """What the index's own bookkeeping promises: one entry per key, gone entries marked with no
    file, ``dead`` counting them, the appended entries found through the tail list."""
    table = live.table()
    hi, lo, op = live.column("hi"), live.column("lo"), live.column("op")
    assert len(set(zip(hi.tolist(), lo.tolist(), strict=True))) == live.n, "a key twice"
    gone = op == OP_GONE
    assert live.dead == int(gone.sum())
    assert live.live == int((op == OP_UPSERT).sum())
    assert (live.column("file")[gone] == -1).all() and (live.column("row")[gone] == -1).all()
    sorted_hi, sorted_lo = hi[:live.sorted_n], lo[:live.sorted_n]
    assert keys_of(sorted_hi, sorted_lo) == list(zip(sorted_hi.tolist(), sorted_lo.tolist(),
                                                     strict=True)), "sorted part out of order"
    assert live.capacity >= live.n
    assert table.num_rows == live.n


def check_fold(live: LiveIndex, result: MergeResult | None, expected: MergeResult) -> None:
    """The folded index describes ``expected.index`` and the fold reports what ``merge`` does."""
    assert result is not None, "fold declined records it can take in place"
    assert_same_index(live.sorted_table(), expected.index)
    counts = ("records_in", "inserted", "updated", "deleted", "duplicates_dropped")
    assert {c: getattr(result, c) for c in counts} == {c: getattr(expected, c) for c in counts}
    assert result.superseded_files.tolist() == expected.superseded_files.tolist()
    assert sorted(result.superseded.tolist()) == sorted(expected.superseded.tolist())
    assert len(result.gone_hi) == len(result.gone_lo) == len(expected.gone_hi)
    assert keys_of(result.gone_hi, result.gone_lo) == keys_of(expected.gone_hi, expected.gone_lo)
    # the entries that entered: where the fold put them, the rows merge put in its index
    assert len(np.unique(result.entered)) == len(result.entered) == len(expected.entered)
    assert sorted(rows(live.table(), result.entered)) == \
        sorted(rows(expected.index, expected.entered))
    assert_same_index(result.index, live.table())
    for name, values in result.columns.items():
        np.testing.assert_array_equal(values, live.column(name))
    check_invariants(live)


def merged_in_slices(index: pa.Table, records: pa.Table, keep_entered: bool = True
                     ) -> MergeResult:
    """The merge of a round the actor does not fold in place: the records as hash outputs (a
    run sorted by key per (pos, file)) merged a few at a time into buffers with room to spare."""
    records = records.combine_chunks()
    pos, file = records.column("pos").to_numpy(), records.column("file").to_numpy()
    outputs = []
    for p, f in sorted(set(zip(pos.tolist(), file.tolist(), strict=True))):
        run = records.filter(pa.array((pos == p) & (file == f)))
        run = run.sort_by([("hi", "ascending"), ("lo", "ascending")])
        outputs.append(HashOutput({0: run.drop_columns(["pos", "file"])}, run.num_rows, 0, p, f))
    order = records.schema.field("order").type if "order" in records.column_names else None
    return merge_in_slices(index, GroupRecords(outputs, 0), record_schema(order), 0, U64,
                           slice_records=8, keep_entered=keep_entered)


def first_index(stream: Stream, size: int) -> pa.Table:
    return stream.next_round(empty_index(stream.order_type), size)


# --- 1. fold agrees with merge, round after round -----------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rebuild", ["as the actor does", "never"])
@pytest.mark.parametrize("start", ["of", "adopt", "adopt sliced"])
@pytest.mark.parametrize("order_kind", list(ORDER_TYPES))
def test_fold_matches_merge_round_after_round(order_kind: str, start: str, rebuild: str,
                                              seed: int) -> None:
    """Rounds folded in place leave the index ``merge`` makes of the same rounds, with the same
    counts, superseded files, gone keys and entered rows; entries that were in the index keep
    their positions. Without an ordering column deleted keys are marked gone and later come
    back; with one they stay as tombstones that older-ordered records lose to. One round brings
    more new keys than the index has room for; with "as the actor does" the index is rebuilt
    whenever ``needs_rebuild`` says so, with "never" the appended entries pile up. The index
    starts as ``LiveIndex.of`` a merged table, or adopts a merge (plain, or in slices as an
    actor's first round); now and then a round is merged in slices as a copy and adopted (the
    actor's path for rounds it cannot fold), and later rounds fold into that."""
    rng = np.random.default_rng([seed, list(ORDER_TYPES).index(order_kind)])
    stream = Stream(rng, ORDER_TYPES[order_kind])
    first = first_index(stream, int(rng.integers(1, 120)))
    reference = merge(empty_index(stream.order_type), first).index
    # an adopted merge shares its arrays: the reference must be a merge of its own
    if start == "adopt":
        live = LiveIndex.adopt(merge(empty_index(stream.order_type), first))
    elif start == "adopt sliced":  # the actor's first round
        live = LiveIndex.adopt(merged_in_slices(empty_index(stream.order_type), first,
                                                keep_entered=False))
    else:
        cut = reference.num_rows // 3
        live = LiveIndex.of(pa.concat_tables([reference.slice(0, cut), reference.slice(cut)]))
    assert_same_index(live.sorted_table(), reference)
    burst = int(rng.integers(2, 8))  # the round that overflows the spare capacity
    rebuilt, grew = 0, False
    for r in range(12):
        if rebuild != "never" and live.needs_rebuild():
            live = live.rebuilt()
            rebuilt += 1
            assert not live.needs_rebuild()
            assert live.sorted_n == live.n and live.dead == 0
            assert_same_index(live.table(), reference)
            check_invariants(live)
        new_keys = live.capacity - live.n + 1 if r == burst else 0
        records = stream.next_round(reference, int(rng.integers(0, 60)), new_keys)
        expected = merge(reference, records)
        if r != burst and rng.random() < 0.1:  # a round merged as a copy, then folded into
            copy = merged_in_slices(live.sorted_table(), records)
            live = LiveIndex.adopt(copy)
            assert_same_index(live.table(), expected.index)
            assert (copy.inserted, copy.updated, copy.deleted) == \
                (expected.inserted, expected.updated, expected.deleted)
        else:
            capacity, n = live.capacity, live.n
            before = {name: live.column(name).copy() for name in ("hi", "lo")}
            result = live.fold(records)
            check_fold(live, result, expected)
            for name, values in before.items():  # entries stay where they were
                np.testing.assert_array_equal(live.column(name)[:n], values)
            if r == burst:
                assert live.n > capacity and live.capacity >= live.n
                grew = True
        reference = expected.index
    assert grew
    if rebuild == "never":
        assert rebuilt == 0
    elif order_kind == "none":
        assert rebuilt > 0


def test_gone_key_comes_back_in_its_slot() -> None:
    """Without an ordering column a deleted key is marked OP_GONE where it is (no file, not in
    ``sorted_table``, counted as dead); re-inserting it later takes that slot again and it is no
    longer dead; ``merge`` agrees on both rounds."""
    keys = np.arange(1, 6, dtype=np.uint64) << np.uint64(40)
    first = records_table(keys, keys, None, pos=[1] * 5, file=[0] * 5, row=range(5), op=[0] * 5,
                          order_type=None)
    reference = merge(empty_index(), first).index
    live = LiveIndex.of(reference)
    delete = records_table(keys[[1]], keys[[1]], None, [2], [1], [0], [OP_DELETE], None)
    expected = merge(reference, delete)
    check_fold(live, live.fold(delete), expected)
    assert live.column("op").tolist() == [0, OP_GONE, 0, 0, 0]
    assert live.dead == 1 and expected.deleted == 1
    assert live.sorted_table().num_rows == 4
    back = records_table(keys[[1]], keys[[1]], None, [3], [2], [7], [OP_UPSERT], None)
    expected = merge(expected.index, back)
    result = live.fold(back)
    check_fold(live, result, expected)
    assert result.entered.tolist() == [1] and result.inserted == 1
    assert live.column("op").tolist() == [0] * 5 and live.dead == 0
    assert (live.column("file")[1], live.column("row")[1]) == (2, 7)


def test_fold_grows_past_capacity() -> None:
    """A round appending more new keys than the spare capacity grows the columns (keeping every
    entry) and later rounds find the appended keys, to update and delete them."""
    rng = np.random.default_rng(7)
    stream = Stream(rng, pa.int64())
    reference = merge(empty_index(pa.int64()), first_index(stream, 40)).index
    live = LiveIndex.of(reference)
    capacity = live.capacity
    spare = capacity - live.n
    assert spare > 0
    records = stream.next_round(reference, 10, new_keys=spare + 5)
    expected = merge(reference, records)
    check_fold(live, live.fold(records), expected)
    assert live.capacity >= live.n > capacity
    reference = expected.index
    replaced_in_tail = 0
    for _ in range(3):  # updates, deletes and duplicates of keys now in the appended tail
        records = stream.next_round(reference, 200)
        expected = merge(reference, records)
        n = live.n
        result = live.fold(records)
        check_fold(live, result, expected)
        replaced_in_tail += int(((result.entered >= live.sorted_n) & (result.entered < n)).sum())
        reference = expected.index
    assert replaced_in_tail > 0


def test_adopted_merge_result_grows_on_first_append() -> None:
    """An index adopted from ``merge`` uses the merge's arrays, which have no spare room: the
    first round with a new key grows them, and the index still matches ``merge``."""
    rng = np.random.default_rng(3)
    stream = Stream(rng, None)
    first = first_index(stream, 30)
    reference = merge(empty_index(), first).index
    live = LiveIndex.adopt(merge(empty_index(), first))
    assert live.capacity == live.n
    records = stream.next_round(reference, 20, new_keys=3)
    expected = merge(reference, records)
    check_fold(live, live.fold(records), expected)
    assert live.capacity > live.n > live.sorted_n


def test_tombstone_keeps_older_records_out() -> None:
    """With an ordering column a deleted key stays where it is as a tombstone (op 1, not gone):
    a later record with an older ordering value loses to it (dropped as a duplicate, the key
    stays deleted); one with a newer value brings the key back in the same slot."""
    keys = np.array([3, 9, 27], np.uint64) << np.uint64(50)
    first = records_table(keys, keys, [5, 5, 5], [1] * 3, [0] * 3, range(3), [0] * 3, pa.int64())
    reference = merge(empty_index(pa.int64()), first).index
    live = LiveIndex.of(reference)
    for order, op, deleted, inserted in ((6, OP_DELETE, 1, 0), (4, OP_UPSERT, 0, 0),
                                         (7, OP_UPSERT, 0, 1)):
        records = records_table(keys[[1]], keys[[1]], [order], [10 + order], [order], [0], [op],
                                pa.int64())
        expected = merge(reference, records)
        result = live.fold(records)
        check_fold(live, result, expected)
        assert (result.deleted, result.inserted) == (deleted, inserted)
        assert result.duplicates_dropped == (order == 4)
        assert live.n == 3 and live.dead == 0
        reference = expected.index
    assert result.entered.tolist() == [1]
    assert live.column("op").tolist() == [0, 0, 0]
    assert live.table().column("order").to_pylist() == \
        order_array(np.array([5, 7, 5]), pa.int64()).to_pylist()


# --- 2. rounds that change nothing: empty, not foldable in place, or rejected ---------------------


def snapshot(live: LiveIndex) -> dict:
    """Everything a fold may change, copied (the whole capacity, the tail list, the counters)."""
    return {
        "columns": {name: values.copy() for name, values in live.columns.items()},
        "order": None if live.order is None else live.order.to_pylist(),
        "tail": [a.copy() for a in live._tail],
        "counters": (live.n, live.sorted_n, live.dead, live.order_type),
        "rows": rows(live.table()),
    }


def assert_unchanged(live: LiveIndex, before: dict) -> None:
    after = snapshot(live)
    assert after["counters"] == before["counters"]
    assert after["rows"] == before["rows"]
    assert after["order"] == before["order"]
    assert after["columns"].keys() == before["columns"].keys()
    for name, values in before["columns"].items():
        np.testing.assert_array_equal(after["columns"][name], values)
    for a, b in zip(after["tail"], before["tail"], strict=True):
        np.testing.assert_array_equal(a, b)


def folded_index(order_type: pa.DataType | None, seed: int = 11) -> tuple[LiveIndex, Stream,
                                                                          pa.Table]:
    """An index with appended (and, without an ordering column, gone) entries, and the reference
    index it describes."""
    stream = Stream(np.random.default_rng(seed), order_type)
    reference = merge(empty_index(order_type), first_index(stream, 80)).index
    live = LiveIndex.of(reference)
    for _ in range(2):
        records = stream.next_round(reference, 40, new_keys=5)
        expected = merge(reference, records)
        check_fold(live, live.fold(records), expected)
        reference = expected.index
    assert live.sorted_n < live.n
    assert live.dead > 0 or order_type is not None
    return live, stream, reference


def with_order(records: pa.Table, order: pa.Array | pa.ChunkedArray) -> pa.Table:
    return records.set_column(records.column_names.index("order"), "order", order)


def test_empty_round_changes_nothing() -> None:
    """A round without records folds to zero counts and leaves every entry as it was."""
    live, _, reference = folded_index(None)
    before = snapshot(live)
    records = record_schema().empty_table()
    expected = merge(reference, records)
    result = live.fold(records)
    check_fold(live, result, expected)
    assert (result.records_in, len(result.entered), len(result.gone_hi)) == (0, 0, 0)
    assert_unchanged(live, before)


def test_empty_index_does_not_fold() -> None:
    """An index without entries (a first round) is merged as a copy: fold returns None."""
    stream = Stream(np.random.default_rng(1), None)
    live = LiveIndex.of(empty_index(), headroom=False)
    records = first_index(stream, 10)
    before = snapshot(live)
    assert live.fold(records) is None
    assert_unchanged(live, before)


def test_variable_width_order_does_not_fold() -> None:
    """String ordering values are held as Arrow, not in place: fold returns None and changes
    nothing, for records of the same type too."""
    hi = np.arange(20, dtype=np.uint64) * np.uint64(1 << 50)
    first = pa.table({"hi": hi, "lo": hi, "order": pa.array([f"v{i}" for i in range(20)]),
                      "pos": np.zeros(20, np.int64), "file": np.zeros(20, np.int32),
                      "row": np.arange(20, dtype=np.int32), "op": np.zeros(20, np.int8)},
                     schema=record_schema(pa.string()))
    live = LiveIndex.of(merge(empty_index(pa.string()), first).index)
    records = first.slice(0, 5).set_column(
        3, "pos", pa.array(np.ones(5, np.int64))).set_column(
        4, "file", pa.array(np.ones(5, np.int32)))
    before = snapshot(live)
    assert live.fold(records) is None
    assert_unchanged(live, before)


@pytest.mark.parametrize("order_kind", ["int64", "timestamp", "float64"])
def test_records_with_null_order_do_not_fold(order_kind: str) -> None:
    """Records with a null ordering value (which ranks below every value) are not folded in
    place: fold returns None and the index, appended and gone entries included, is unchanged."""
    live, stream, reference = folded_index(ORDER_TYPES[order_kind])
    records = stream.next_round(reference, 30)
    order = records.column("order").combine_chunks()
    nulls = np.zeros(len(order), bool)
    nulls[len(order) // 2] = True
    records = with_order(records, pa.array(order.to_pylist(), order.type,
                                           mask=nulls))
    assert records.column("order").null_count == 1
    before = snapshot(live)
    assert live.fold(records) is None
    assert_unchanged(live, before)


def test_index_with_null_order_does_not_fold() -> None:
    """An index whose ordering values include a null keeps them as Arrow: no fold in place."""
    first = records_table([1 << 40, 2 << 40], [1, 2], [1, 2], [0, 0], [0, 0], [0, 1], [0, 0],
                          pa.int64())
    first = with_order(first, pa.array([None, 5], pa.int64()))
    live = LiveIndex.of(merge(empty_index(pa.int64()), first).index)
    records = records_table([1 << 40], [1], [3], [1], [1], [0], [0], pa.int64())
    before = snapshot(live)
    assert live.fold(records) is None
    assert_unchanged(live, before)


@pytest.mark.parametrize(("index_type", "records_type"), [
    (pa.int64(), pa.int32()),
    (pa.int64(), pa.timestamp("us")),
    (pa.timestamp("us", tz="UTC"), pa.timestamp("ms", tz="UTC")),
    (pa.float64(), pa.int64()),
    (pa.int64(), None),
    (None, pa.int64()),
])
def test_other_order_type_does_not_fold(index_type: pa.DataType | None,
                                        records_type: pa.DataType | None) -> None:
    """Records whose ordering column has another type than the index's (or that have one where
    the index has none, or the reverse) are not folded: fold returns None, nothing changes
    (``merge`` unifies the types or rejects them)."""
    live, _, reference = folded_index(index_type)
    other = Stream(np.random.default_rng(5), records_type)
    records = other.next_round(reference, 30)
    before = snapshot(live)
    assert live.fold(records) is None
    assert_unchanged(live, before)


def test_dictionary_order_is_decoded_and_folded() -> None:
    """Dictionary-encoded ordering values of the index's type are folded like plain ones."""
    live, stream, reference = folded_index(pa.int64())
    records = stream.next_round(reference, 40)
    encoded = with_order(records, records.column("order").dictionary_encode())
    expected = merge(reference, records)
    check_fold(live, live.fold(encoded), expected)


@pytest.mark.parametrize("bad", ["repeated locator", "bad op"])
def test_bad_records_raise_before_changing_anything(bad: str) -> None:
    """Records ``merge`` rejects make fold raise the same error, with the index unchanged."""
    live, stream, reference = folded_index(None)
    records = stream.next_round(reference, 20)
    if bad == "repeated locator":  # a key's winning (pos, file, row) twice
        twice = records_table([5, 5], [5, 5], None, [99, 99], [1, 1], [3, 3], [0, 0], None)
        records = pa.concat_tables([records, twice])
    else:
        records = records.set_column(records.column_names.index("op"), "op",
                                     pa.array(np.full(records.num_rows, 3, np.int8)))
    with pytest.raises(MergeInputError):
        merge(reference, records)
    before = snapshot(live)
    with pytest.raises(MergeInputError):
        live.fold(records)
    assert_unchanged(live, before)


# --- 3. key order over appended and gone entries ------------------------------------------------


def positions_of(got: np.ndarray | slice) -> np.ndarray:
    """``in_key_order``'s answer as an array of positions (it may answer a run of consecutive
    positions as a slice)."""
    if isinstance(got, slice):
        assert got.step is None and 0 <= got.start <= got.stop
        return np.arange(got.start, got.stop, dtype=np.int64)
    return got


def expected_in_key_order(live: LiveIndex, first_hi: int, end_hi: int | None) -> np.ndarray:
    hi, lo, op = live.column("hi"), live.column("lo"), live.column("op")
    inside = (hi >= np.uint64(first_hi)) & (op != OP_GONE)
    if end_hi is not None:
        inside &= hi < np.uint64(end_hi)
    positions = np.flatnonzero(inside)
    return positions[np.lexsort((lo[positions], hi[positions]))]


def expected_count(live: LiveIndex, first_hi: int, end_hi: int | None) -> int:
    hi = live.column("hi")
    inside = hi >= np.uint64(first_hi)
    if end_hi is not None:
        inside &= hi < np.uint64(end_hi)
    return int(inside.sum())


@pytest.mark.parametrize("order_kind", ["none", "int64"])
def test_in_key_order_and_count_between(order_kind: str) -> None:
    """``in_key_order(first_hi, end_hi)`` lists the positions of the entries with ``hi`` in
    [first_hi, end_hi) in key order, appended ones merged in and gone ones left out;
    ``count_between`` counts those entries gone ones included. Ranges start and end on ``hi``
    values held by several keys, between them, at 0 and at the top."""
    live, _, reference = folded_index(ORDER_TYPES[order_kind], seed=23)
    hi = live.column("hi")
    assert live.sorted_n < live.n
    if order_kind == "none":
        assert live.dead > 0
        assert (hi[live.sorted_n:] < hi[live.sorted_n - 1]).any(), "appended keys all last"
    values = np.unique(hi).tolist()
    bounds = sorted({0, 1, U64 - 1, *values, *(v + 1 for v in values if v + 1 < U64)})
    rng = np.random.default_rng(0)
    ranges = [(0, None), (values[-1], None), (U64 - 1, None), (0, values[0])]
    ranges += [(v, v + 1) for v in values if v + 1 < U64]  # the keys of one hi value
    ranges += [(bounds[a], bounds[b]) for a, b in
               (sorted(rng.integers(0, len(bounds), 2)) for _ in range(60))]
    table = live.table()
    take = getattr(live, "take", None)  # (entries at in_key_order's positions, if it has one)
    for first_hi, end_hi in ranges:
        got = live.in_key_order(first_hi, end_hi)
        expected = expected_in_key_order(live, first_hi, end_hi)
        np.testing.assert_array_equal(positions_of(got), expected,
                                      err_msg=f"range [{first_hi}, {end_hi})")
        if take is not None:
            assert rows(take(got)) == rows(table, expected)
        assert live.count_between(first_hi, end_hi) == expected_count(live, first_hi, end_hi)
    whole = positions_of(live.in_key_order())
    np.testing.assert_array_equal(whole, expected_in_key_order(live, 0, None))
    assert_same_index(table.take(pa.array(whole)), reference)
    assert live.count_between(0, None) == live.n


def test_index_schema_of_folded_table() -> None:
    """``table()`` and ``sorted_table()`` have the index schema (ordering type kept)."""
    for order_type in (None, pa.int64(), pa.timestamp("us", tz="UTC"), pa.float64()):
        live, _, _ = folded_index(order_type)
        assert live.table().schema.equals(index_schema(order_type))
        assert live.sorted_table().schema.equals(index_schema(order_type))
