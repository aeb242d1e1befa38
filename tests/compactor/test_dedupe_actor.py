"""A dedupe actor over several buckets, round after round: the index it persists is the one it
holds, and both hold exactly the live keys (an independent count of the rounds' changes)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from compactor.fs import Storage
from compactor.hashing import bucket_of
from compactor.merge import OP_DELETE, OP_UPSERT, index_schema, record_schema
from compactor.pipeline import dedupe, index_store, locators
from compactor.pipeline.dedupe import DedupeActor
from compactor.pipeline.hash_bucket import HashOutput


def _output(hi: np.ndarray, ops: np.ndarray, order: np.ndarray | None, position: int,
            j: int) -> HashOutput:
    """A hash output of one source file ``j`` (row r: key ``hi[r]``), sorted by key."""
    by_key = np.argsort(hi, kind="stable")
    fields = [f for f in record_schema(pa.int64() if order is not None else None)
              if f.name not in ("pos", "file")]
    columns = {"hi": hi[by_key], "lo": hi[by_key] ^ np.uint64(0x5555),
               "row": by_key.astype(np.int32), "op": ops[by_key]}
    if order is not None:
        columns["order"] = order[by_key]
    table = pa.table([columns[f.name] for f in fields], schema=pa.schema(fields))
    return HashOutput({0: table}, len(hi), 0, position, locators.source(j))


@pytest.mark.parametrize("fold", ["in place", "in place, in slices", "a copy"])
@pytest.mark.parametrize("ordered", [False, True])
def test_persisted_index_is_the_held_one_and_holds_the_live_keys(
        tmp_path, monkeypatch: pytest.MonkeyPatch, ordered: bool, fold: str) -> None:
    """New keys of every bucket are appended after all sorted entries, so the changed entries
    are not in bucket order; each bucket's persisted chain (a base, then deltas: updates hit
    the newest keys, which live in each bucket's last small files) must still get exactly
    its own."""
    if fold == "in place, in slices":  # a round's records folded a range of keys at a time
        monkeypatch.setattr(dedupe, "SLICE_RECORDS", 17)
    if fold == "a copy":  # every round merges a copy of the index
        monkeypatch.setattr(dedupe, "IN_PLACE_RECORDS", 0)
        monkeypatch.setattr(dedupe, "IN_PLACE_FRACTION", 10**9)
    buckets, count = [0, 1, 2], 3
    order_type = pa.int64() if ordered else None
    storage = Storage(f"file://{tmp_path}")
    actor = DedupeActor(storage, "p", buckets, count, order_type)
    rng = np.random.default_rng(11)
    live: set[int] = set()
    deleted: set[int] = set()
    sizes: dict[int, tuple[int, ...]] = {}
    state = None
    newest = np.zeros(0, dtype=np.uint64)
    deltas = moved = 0
    for round_ in range(8):
        new = rng.integers(1, 2**64 - 1, 3000 if round_ == 0 else 60, dtype=np.uint64)
        hot = np.array(sorted(set(newest.tolist()) & live), dtype=np.uint64)
        updates = rng.choice(hot, min(len(hot), 20), replace=False)
        deletes = np.setdiff1d(rng.choice(hot, min(len(hot), 10), replace=False), updates)
        revived = np.array(sorted(deleted)[:5], dtype=np.uint64)
        absent = rng.integers(1, 2**64 - 1, 3, dtype=np.uint64)  # deletes of unknown keys
        hi = np.concatenate([new, updates, revived, deletes, absent])
        ops = np.r_[np.zeros(len(new) + len(updates) + len(revived), np.int8),
                    np.full(len(deletes) + len(absent), OP_DELETE, np.int8)]
        order = np.full(len(hi), 1000 + round_, np.int64) if ordered else None
        actor.merge(state, None if state is None else actor.chains, sizes, 0,
                    [_output(hi, ops, order, round_ + 1, 0)])
        ordinals = sorted({o for plan in actor.pending.plans.values() for o, _ in plan.sources}
                          | {locators.source(0)})
        chains, _ = actor.finalize([ordinals], 100)
        deltas += sum("/delta-" in chain[-1] for chain in chains.values())
        moved += sum(index_store.is_moves(rel) for chain in chains.values() for rel in chain[-2:])
        state = round_ + 1
        actor.commit(state)
        live |= set(new.tolist()) | set(revived.tolist())
        live -= set(deletes.tolist())
        deleted = (deleted | set(deletes.tolist())) - set(revived.tolist())
        newest = new
        # what the next round's plan is told: each bucket's files and their rows
        file = actor.index.column("file")
        op = actor.index.column("op")
        sizes = {}
        for b in buckets:
            mine = file[(op == OP_UPSERT) & (file >= 0) & (file >> 16 == b)] & 0xFFFF
            sizes[b] = tuple(np.bincount(mine).tolist()) if len(mine) else ()
        held_live: set[int] = set()
        for i, b in enumerate(buckets):
            held = actor.index.take(actor.index.in_key_order(*actor._range(i)))
            persisted = index_store.read(storage, actor.chains[b], index_schema(order_type))
            assert persisted.equals(held), f"round {round_}, bucket {b}"
            keys = held.column("hi").to_numpy()
            assert (bucket_of(keys, count) == b).all()
            held_live |= set(keys[held.column("op").to_numpy() == OP_UPSERT].tolist())
        assert held_live == live, f"round {round_}"
    # later rounds' new keys were appended (or, merged as copies, sorted in)
    assert (actor.index.sorted_n < actor.index.n) == (fold != "a copy")
    assert deltas >= 10  # and most buckets' changes were persisted as deltas
    assert moved >= 5  # after moves of the files their rounds rewrote
