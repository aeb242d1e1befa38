"""Edge cases of the in-place dedupe index that a review found failing (each test failed
before its fix)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from compactor.fs import Storage
from compactor.merge import OP_DELETE, OP_UPSERT, record_schema
from compactor.pipeline import locators
from compactor.pipeline.dedupe import DedupeActor
from compactor.pipeline.hash_bucket import HashOutput
from compactor.pipeline.locators import SOURCE_BASE, compacted
from compactor.pipeline.rewrite_map import RewriteMap


def _output(hi: np.ndarray, ops: np.ndarray, position: int) -> HashOutput:
    by_key = np.argsort(hi, kind="stable")
    fields = [f for f in record_schema(None) if f.name not in ("pos", "file")]
    table = pa.table({"hi": hi[by_key], "lo": hi[by_key], "row": by_key.astype(np.int32),
                      "op": ops[by_key]}, schema=pa.schema(fields))
    return HashOutput({0: table}, len(hi), 0, position, locators.source(0))


def _round(actor: DedupeActor, state, hi, ops, position) -> None:
    actor.merge(state, None if state is None else dict(actor.chains), {0: ()} if state is None
                else {0: tuple(np.bincount(actor.index.column("file")[
                    actor.index.column("op") == OP_UPSERT] & 0xFFFF).tolist())},
                0, [_output(hi, ops, position)])
    ordinals = sorted({o for p in actor.pending.plans.values() for o, _ in p.sources})
    actor.finalize([ordinals] if ordinals else [], 1000)
    actor.commit(position)


def test_round_after_every_key_was_deleted_folds(tmp_path) -> None:
    """Every key of the group deleted (no ordering column: their entries are marked gone);
    the next round finds the index due for a rebuild, and the rebuilt index is empty: its fold
    in place must not be attempted (LiveIndex.fold refuses an empty index: it raised
    ValueError)."""
    actor = DedupeActor(Storage(f"file://{tmp_path}"), "p", [0], 1, None)
    keys = np.arange(1, 11, dtype=np.uint64) << np.uint64(40)
    _round(actor, None, keys, np.zeros(10, np.int8), 1)
    _round(actor, 1, keys, np.full(10, OP_DELETE, np.int8), 2)
    assert actor.index.live == 0 and actor.index.n == 10  # all gone, slots kept
    new = np.array([7 << 40], dtype=np.uint64)
    _round(actor, 2, new, np.zeros(1, np.int8), 3)
    assert actor.index.live == 1


def test_unknown_compacted_file_above_the_maps_highest_is_refused() -> None:
    """A selected entry naming a compacted file the map was not given, above its highest: the
    lookup table must not take it for a source (it landed on a source's slot and passed the
    check)."""
    ordinals = np.array([compacted(0, 1), SOURCE_BASE])
    spans = np.array([10, 10])
    file = np.array([compacted(0, 1), compacted(0, 2)], np.int32)  # (0, 2): not one of them
    row = np.array([0, 3], np.int32)
    with pytest.raises(ValueError, match="outside"):
        RewriteMap(ordinals, spans, file, row, np.ones(2, bool), lambda at: 0, 1)


def test_an_actor_holding_no_index_names_no_state(tmp_path) -> None:
    """A commit that reaches a restarted actor (its index lost with its process) or an abort
    leaves no index in memory: the actor must not claim to hold the committed state."""
    actor = DedupeActor(Storage(f"file://{tmp_path}"), "p", [0], 1, None)
    actor.commit(5)  # restarted after its round's finalize: nothing in memory
    assert actor.loaded_state() is None
    keys = np.arange(1, 4, dtype=np.uint64) << np.uint64(40)
    _round(actor, None, keys, np.zeros(3, np.int8), 1)
    assert actor.loaded_state() == 1
    actor.abort()
    assert actor.loaded_state() is None
