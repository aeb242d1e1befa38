"""Pieces shared by the tests that drive a dedupe actor round after round against a simulated
materialize and a plain-Python oracle of the merge rule (test_dedupe_actor_mishaps,
test_index_moves, test_complement_map).

A source file of a round is a list of rows ``(key, op, order, version)``; a simulated compacted
file is a list of ``(key, version)``; the oracle maps each key in the index to
``(order, op, version)``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from compactor.merge import OP_DELETE, OP_UPSERT, record_schema
from compactor.pipeline import locators
from compactor.pipeline.hash_bucket import HashOutput


def hash_output(keys: list[tuple[int, int]], ops: list[int], orders: list[int] | None,
                position: int, ordinal: int, order_type: pa.DataType | None) -> HashOutput:
    """The hash output (one group) of a source file whose row r has key ``keys[r]``."""
    hi = np.array([k[0] for k in keys], dtype=np.uint64)
    lo = np.array([k[1] for k in keys], dtype=np.uint64)
    by_key = np.lexsort((lo, hi))
    fields = [f for f in record_schema(order_type) if f.name not in ("pos", "file")]
    columns = {"hi": hi[by_key], "lo": lo[by_key], "row": by_key.astype(np.int32),
               "op": np.array(ops, dtype=np.int8)[by_key]}
    if orders is not None:
        columns["order"] = np.array(orders, dtype=np.int64)[by_key]
    table = pa.table([columns[f.name] for f in fields], schema=pa.schema(fields))
    return HashOutput({0: table}, len(keys), 0, position, ordinal)


def hash_outputs(files: list[list[Any]], base_pos: int,
                 order_type: pa.DataType | None) -> list[HashOutput]:
    """A round's source files as hash outputs, file j at stream position ``base_pos + j``."""
    return [hash_output([k for k, *_ in rows], [o for _, o, _, _ in rows],
                        [x for _, _, x, _ in rows] if order_type else None,
                        base_pos + j, locators.source(j), order_type)
            for j, rows in enumerate(files)]


def expected_after(oracle: dict, files: list[list[Any]], base_pos: int, ordered: bool) -> dict:
    """The oracle after a round of source ``files`` (file j at stream position
    ``base_pos + j``)."""
    oracle = dict(oracle)
    best: dict = {}
    for j, rows in enumerate(files):
        for r, (key, op, order, version) in enumerate(rows):
            cmp = ((order if ordered else 0), base_pos + j, locators.source(j), r)
            if key not in best or cmp > best[key][0]:
                best[key] = (cmp, op, order, version)
    for key, (_cmp, op, order, version) in best.items():
        old = oracle.get(key)
        if ordered and old is not None and order < old[0]:
            continue  # loses to the indexed entry (ties: the later record wins)
        if op == OP_DELETE and not ordered:
            oracle.pop(key, None)
        else:
            oracle[key] = (order, op, version)
    return oracle


def materialize(current: dict[int, list[list[Any]]], plans: dict, groups: list[list[int]],
                files: list[list[Any]], rows_per_file: int) -> dict[int, list[list[Any]]]:
    """The simulated compacted files of each bucket after a round: its kept files, then each
    task's rows of it (sources in ordinal order) cut into the fewest files of at most
    ``rows_per_file`` rows, each but the last of the even share (rounded up)."""
    out_files = {}
    for b, bucket_files in current.items():
        p = plans.get(b)
        if p is None:
            out_files[b] = bucket_files
            continue
        out = [bucket_files[i] for i in p.keep]
        sources = {o: rs.array() for o, rs in p.sources}
        for g in groups:
            rows = []
            for o in g:
                for r in sources.get(o, np.zeros(0, np.int64)).tolist():
                    if o >= locators.SOURCE_BASE:
                        key, _op, _order, version = files[o - locators.SOURCE_BASE][r]
                        rows.append((key, version))
                    else:
                        rows.append(current[o >> 16][o & 0xFFFF][r])
            count = -(-len(rows) // rows_per_file)
            size = -(-len(rows) // count) if count else 1
            out += [rows[i:i + size] for i in range(0, len(rows), size)]
        out_files[b] = out
    return out_files


def check_index(held: pa.Table, oracle: dict, files: dict[int, list[list[Any]]],
                bucket_of: Any, ordered: bool, where: str) -> int:
    """An index (one entry per key) against the oracle and the simulated files: the same keys,
    ops and ordering values; each live key's entry at the row of its bucket's files holding
    its version, tombstones at none, and no other row in the files. Returns the live keys."""
    hi, lo = held.column("hi").to_numpy(), held.column("lo").to_numpy()
    op, file, row = (held.column(c).to_numpy() for c in ("op", "file", "row"))
    order = held.column("order").to_pylist() if ordered else [None] * len(hi)
    got = {(int(hi[j]), int(lo[j])): (int(op[j]), int(file[j]), int(row[j]), order[j])
           for j in range(held.num_rows)}
    assert set(got) == set(oracle), f"{where}: keys differ"
    located = set()
    for key, (order_, o, version) in oracle.items():
        gop, gfile, grow, gorder = got[key]
        assert gop == o, f"{where}: op of {key}"
        if ordered:
            assert gorder == order_, f"{where}: order of {key}"
        if o == OP_UPSERT:
            b = gfile >> 16
            assert 0 <= gfile < locators.SOURCE_BASE and b == bucket_of(key[0]), \
                f"{where}: {key} points at file {gfile}"
            bucket_files = files[b]
            assert (gfile & 0xFFFF) < len(bucket_files), f"{where}: {key}: no file {gfile}"
            content = bucket_files[gfile & 0xFFFF][grow] \
                if grow < len(bucket_files[gfile & 0xFFFF]) else None
            assert content == (key, version), f"{where}: {key} points at {content}"
            located.add((gfile, grow))
        else:
            assert gfile == -1, f"{where}: tombstone {key} in a file"
    rows_in_files = sum(len(f) for bucket_files in files.values() for f in bucket_files)
    assert rows_in_files == len(located), f"{where}: files hold stray rows"
    return len(located)
