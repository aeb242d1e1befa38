"""Reloading an index chain with the deltas spliced into the sorted base (``_fold``) against
an independent, plain-Python fold of the chain: per key the newest entry, keys that left
(OP_ABSENT) dropped, sorted by (hi, lo); moves files repoint the entries read before them."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from compactor.fs import Storage
from compactor.merge import index_schema
from compactor.pipeline import index_store

ABSENT = index_store.OP_ABSENT
ORDER_TYPES = [None, pa.int64(), pa.string()]


def _table(rows: list[dict], schema: pa.Schema, chunks: int = 1) -> pa.Table:
    """Entries (dicts with hi, lo, file, row, op and, with an order column, order) as a table
    of ``chunks`` chunks (when it has enough rows)."""
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    if chunks > 1 and table.num_rows >= chunks:
        cuts = np.linspace(0, table.num_rows, chunks + 1).astype(int)
        table = pa.concat_tables([table.slice(a, b - a) for a, b in itertools.pairwise(cuts)])
        assert table.column("hi").num_chunks == chunks
    return table


def _entry(hi: int, lo: int, file: int = 0, row: int = 0, op: int = 0, schema=None,
           order=None) -> dict:
    e = {"hi": hi, "lo": lo, "file": file, "row": row, "op": op}
    if schema is not None and "order" in schema.names:
        e["order"] = order
    return e


def _expected(parts: list[list[dict]]) -> list[dict]:
    """The plain fold: a dict per key, later parts (and later rows) overwrite."""
    newest: dict[tuple[int, int], dict] = {}
    for part in parts:
        for e in part:
            newest[(e["hi"], e["lo"])] = e
    return [newest[k] for k in sorted(newest) if newest[k]["op"] != ABSENT]


def _check_fold(parts: list[list[dict]], schema: pa.Schema, chunks: int = 1) -> None:
    tables = [_table(p, schema, chunks) for p in parts]
    folded = index_store._fold(tables)
    assert folded.schema.equals(schema)
    assert folded.to_pylist() == _expected(parts)


# --- targeted cases ---------------------------------------------------------------------------

BASE = [(5, 1), (5, 3), (5, 5), (7, 0), (9, 9)]


def _base() -> list[dict]:
    return [_entry(h, lo_, 1, i) for i, (h, lo_) in enumerate(BASE)]


@pytest.mark.parametrize("delta_keys,ops", [
    ([(0, 0), (1, 7), (4, 99)], [0, 1, 0]),  # all before the base
    ([(9, 10), (10, 0), (2**64 - 1, 2**64 - 1)], [0, 0, 1]),  # all after the base
    ([(5, 0), (5, 2), (5, 4), (5, 6)], [0, 0, 0, 0]),  # between keys sharing hi
    ([(5, 1), (5, 3), (5, 5)], [ABSENT] * 3),  # a whole run of hi gone
    ([(5, 1), (9, 9)], [ABSENT, ABSENT]),  # first and last gone
    ([(k[0], k[1]) for k in BASE], [ABSENT] * 5),  # every key gone
    ([(6, 0), (8, 8), (3, 3)], [ABSENT] * 3),  # gone keys the base never had
    ([(5, 3), (5, 4), (7, 0), (7, 1)], [1, 0, 0, ABSENT]),  # replace, insert beside, tombstone
    ([], []),  # an empty delta
])
def test_single_delta_cases(delta_keys, ops):
    schema = index_schema()
    delta = [_entry(h, lo_, 2, i, op)
             for i, ((h, lo_), op) in enumerate(zip(delta_keys, ops, strict=True))]
    for e in delta:
        if e["op"] != 0:
            e["file"], e["row"] = -1, -1
    _check_fold([_base(), delta], schema)
    _check_fold([_base(), delta], schema, chunks=2)


def test_a_key_gone_then_back_and_back_then_gone():
    base = _base()
    d1 = [_entry(5, 3, -1, -1, ABSENT), _entry(6, 6, 2, 0), _entry(9, 9, -1, -1, ABSENT)]
    d2 = [_entry(5, 3, 3, 0), _entry(6, 6, -1, -1, ABSENT)]  # 5/3 back, 6/6 gone again
    d3: list[dict] = []
    d4 = [_entry(9, 9, 4, 1, 1)]  # 9/9 back as a tombstone
    _check_fold([base, d1, d2, d3, d4], index_schema())
    got = index_store._fold([_table(p, index_schema()) for p in (base, d1, d2, d3, d4)])
    assert list(zip(got.column("hi").to_pylist(), got.column("lo").to_pylist(), strict=True)) \
        == [(5, 1), (5, 3), (5, 5), (7, 0), (9, 9)]
    assert got.column("file").to_pylist() == [1, 3, 1, 1, 4]


def test_only_absent_deltas_and_tiny_bases():
    schema = index_schema()
    for base in ([], [_entry(5, 5, 1, 0)], [_entry(5, 5, 1, 0, 1), _entry(5, 6, -1, -1, 1)]):
        for deltas in ([[_entry(5, 5, -1, -1, ABSENT)]], [[], []],
                       [[_entry(5, 5, -1, -1, ABSENT)], [_entry(5, 5, 2, 0)]],
                       [[_entry(4, 0, 2, 0)], [_entry(4, 0, -1, -1, ABSENT)]]):
            _check_fold([base, *deltas], schema)


@pytest.mark.parametrize("order_type", ORDER_TYPES)
def test_the_order_column_travels_with_its_entry(order_type):
    schema = index_schema(order_type)
    def val(i):
        return (None if order_type is None else (str(i) if order_type == pa.string() else i))
    base = [_entry(h, lo_, 1, i, schema=schema, order=val(100 + i))
            for i, (h, lo_) in enumerate(BASE)]
    d1 = [_entry(5, 3, 2, 0, schema=schema, order=val(7)),
          _entry(5, 4, 2, 1, schema=schema, order=val(8)),
          _entry(0, 0, 2, 2, schema=schema, order=val(9))]
    absent = index_store.absent(np.array([(7, 0)], dtype=index_store.KEY), schema).to_pylist()
    d2 = [*absent, _entry(99, 0, 3, 0, schema=schema, order=val(10))]
    _check_fold([base, d1, d2], schema)
    _check_fold([base, d1, d2], schema, chunks=3)


# --- random chains ----------------------------------------------------------------------------

def _random_part(rng, n: int, schema: pa.Schema, ops, hi_values: int, lo_values: int
                 ) -> list[dict]:
    hi = rng.integers(0, hi_values, n).astype(np.uint64)
    hi[rng.random(n) < 0.1] |= np.uint64(1 << 63)  # digests with the top bit set
    lo = rng.integers(0, lo_values, n).astype(np.uint64)
    keys = sorted({(int(h), int(lo_)) for h, lo_ in zip(hi, lo, strict=True)})
    rng.shuffle(keys) if rng.random() < 0.5 else None
    out = []
    for h, lo_ in keys:
        op = int(rng.choice(ops))
        file, row = (int(rng.integers(0, 9)), int(rng.integers(0, 9))) if op == 0 else (-1, -1)
        order = None
        if "order" in schema.names and op != ABSENT:
            v = int(rng.integers(0, 50))
            order = str(v) if schema.field("order").type == pa.string() else v
        out.append(_entry(h, lo_, file, row, op, schema, order))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_random_chains_fold_as_the_plain_fold(seed):
    rng = np.random.default_rng(seed)
    schema = index_schema(ORDER_TYPES[seed % 3])
    base = sorted(_random_part(rng, int(rng.choice([0, 1, 2, 40, 150])), schema, (0, 0, 1), 30, 5),
                  key=lambda e: (e["hi"], e["lo"]))
    if seed % 10 == 9:
        rng.shuffle(base)  # an unsorted base: the sort
    op_sets = [(0, 1, ABSENT), (ABSENT,), (0,), (1, ABSENT)]
    deltas = [_random_part(rng, int(rng.choice([0, 1, 5, 40])), schema,
                           op_sets[int(rng.integers(0, 4))], int(rng.choice([3, 30, 40])), 6)
              for _ in range(int(rng.integers(1, 5)))]
    _check_fold([base, *deltas], schema, chunks=int(rng.integers(1, 4)))


# --- read: moves on the base and on earlier deltas --------------------------------------------

def _moved(e: dict, moves: list[index_store.Move]) -> dict:
    """An entry after ``moves``, straight from the moves file's description."""
    for m in moves:
        if e["file"] != m.ordinal:
            continue
        e = dict(e)
        if m.survivors is None:
            e["file"] = m.first_file
        elif 0 <= e["row"] < len(m.survivors) and m.survivors[e["row"]]:
            place = m.first_slot + int(np.count_nonzero(m.survivors[:e["row"]]))
            e["file"], e["row"] = m.first_file + place // m.rows_per_file, \
                place % m.rows_per_file
        else:
            e["file"], e["row"] = -1, -1
        return e
    return e


def _write_chain(storage, prefix, items, schema):
    """items: ("part", entries) or ("moves", moves); the chain's paths and
    the expected fold."""
    chain, parts = [], []
    for i, (kind, what) in enumerate(items):
        if kind == "moves":
            rel = f"{prefix}/moves-{i}.arrow"
            index_store.write_moves(storage, rel, what)
            parts = [[_moved(e, what) for e in p] for p in parts]
        else:
            rel = f"{prefix}/{'base' if not parts else 'delta'}-{i}.arrow"
            index_store.write(storage, rel, _table(what, schema))
            parts.append(what)
        chain.append(rel)
    return chain, _expected(parts)


def test_moves_repoint_the_base_and_an_earlier_delta_then_splice(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    schema = index_schema(pa.int64())
    b = 3 << 16
    base = [_entry(10 + r, 0, b | 0, r, schema=schema, order=1) for r in range(4)]  # file 0
    base += [_entry(20 + r, 0, b | 1, r, schema=schema, order=1) for r in range(6)]  # file 1
    base += [_entry(30 + r, 0, b | 2, r, schema=schema, order=1) for r in range(2)]  # file 2
    base.sort(key=lambda e: (e["hi"], e["lo"]))
    # round 1: file 2 renumbered 1, file 1 rewritten (rows 0, 2, 3, 5 kept) into files 2..5
    # from place 3 on, 2 rows per file; keys 21 and 24 (rows not kept) replaced in file 8, key 5
    # new in file 6
    surv = np.array([True, False, True, True, False, True])
    m1 = [index_store.Move(b | 2, b | 1), index_store.Move(b | 1, b | 2, 3, surv, 2)]
    d1 = [_entry(21, 0, b | 8, 0, schema=schema, order=2),
          _entry(24, 0, b | 8, 1, schema=schema, order=2),
          _entry(5, 0, b | 6, 0, schema=schema, order=2)]
    # round 2: file 6 (d1's key 5) and file 0 rewritten; file 0 keeps rows 1, 3; keys 10 and
    # 12 gone; the task writes 4 rows per file
    m2 = [index_store.Move(b | 6, b | 7, 0, np.array([True]), 4),
          index_store.Move(b | 0, b | 7, 1, np.array([False, True, False, True]), 4)]
    d2 = index_store.absent(np.array([(10, 0), (12, 0)], dtype=index_store.KEY),
                            schema).to_pylist()
    chain, expected = _write_chain(storage, "p", [("part", base), ("moves", m1), ("part", d1),
                                                  ("moves", m2), ("part", d2)], schema)
    got = index_store.read(storage, chain, schema)
    assert got.to_pylist() == expected
    loc = {h: (f, r) for h, f, r in zip(got.column("hi").to_pylist(),
                                        got.column("file").to_pylist(),
                                        got.column("row").to_pylist(), strict=True)}
    assert loc[5] == (b | 7, 0) and loc[11] == (b | 7, 1) and loc[13] == (b | 7, 2)
    assert loc[20] == (b | 3, 1) and loc[22] == (b | 4, 0) and loc[25] == (b | 5, 0)
    assert loc[30] == (b | 1, 0) and loc[21] == (b | 8, 0) and loc[24] == (b | 8, 1)
    assert 10 not in loc and 12 not in loc


def test_an_earlier_delta_entry_left_nowhere_by_later_moves_is_refused(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    schema = index_schema()
    base = [_entry(k, k, 0, k) for k in range(4)]
    d1 = [_entry(9, 9, 1, 0), _entry(8, 8, 1, 1)]
    m = [index_store.Move(1, 2, 0, np.array([False, True]), 4)]  # d1's key 9 lost its row
    chain, _ = _write_chain(storage, "q", [("part", base), ("part", d1), ("moves", m),
                                           ("part", [_entry(2, 2, 3, 0)])], schema)
    with pytest.raises(index_store.IndexUnavailable, match="1 live keys point at no row"):
        index_store.read(storage, chain, schema)
    chain, expected = _write_chain(storage, "r", [("part", base), ("part", d1), ("moves", m),
                                                  ("part", [_entry(9, 9, 3, 0)])], schema)
    assert index_store.read(storage, chain, schema).to_pylist() == expected


@pytest.mark.parametrize("seed", range(40))
def test_random_chains_read_as_the_plain_fold(tmp_path, seed):
    storage = Storage(f"file://{tmp_path}")
    rng = np.random.default_rng(1000 + seed)
    schema = index_schema(ORDER_TYPES[seed % 3])
    base = sorted(_random_part(rng, int(rng.choice([0, 2, 60])), schema, (0, 0, 1), 30, 5),
                  key=lambda e: (e["hi"], e["lo"]))
    items = [("part", base)]
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.6:
            ordinals = rng.choice(12, int(rng.integers(1, 12)), replace=False)
            moves = [index_store.Move(int(o), int(rng.integers(0, 30))) if rng.random() < 0.3
                     else index_store.Move(int(o), int(rng.integers(0, 30)),
                                           int(rng.integers(0, 5)), rng.random(9) < 0.7,
                                           int(rng.integers(1, 4)))  # (each task its own)
                     for o in ordinals]
            items.append(("moves", moves))
        items.append(("part", _random_part(rng, int(rng.choice([0, 3, 30])), schema,
                                           (0, 1, ABSENT), 30, 6)))
    chain, expected = _write_chain(storage, f"s{seed}", items, schema)
    moved = any(kind == "moves" for kind, _ in items)
    if moved and any(e["op"] == 0 and e["file"] < 0 for e in expected):
        with pytest.raises(index_store.IndexUnavailable):
            index_store.read(storage, chain, schema)
    else:
        assert index_store.read(storage, chain, schema).to_pylist() == expected
