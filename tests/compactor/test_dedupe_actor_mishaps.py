"""A dedupe actor driven round after round against a simulated materialize and a
plain-Python oracle of the merge rule, with rounds aborted and retried, folds repeated, commits
not delivered, and every fold strategy (in place, in slices, rebuilt, a copy) mixed.

After each committed round: every live key's entry points at a row of the simulated files that
holds that key's winning version; the files hold no other rows; the index read back from the
persisted chains is the one the actor holds (and a fresh actor loading it agrees)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from compactor.fs import Storage
from compactor.hashing import bucket_start
from compactor.merge import OP_DELETE, OP_UPSERT, index_schema
from compactor.pipeline import dedupe, index_store, live_index
from compactor.pipeline.dedupe import DedupeActor
from tests.compactor._actor_sim import (
    check_index,
    expected_after,
    hash_outputs,
    materialize,
)


class Sim:
    def __init__(self, tmp_path, buckets, count, ordered, seed):
        self.storage = Storage(f"file://{tmp_path}")
        self.buckets, self.count = buckets, count
        self.order_type = pa.int64() if ordered else None
        self.rng = np.random.default_rng(seed)
        self.actor = DedupeActor(self.storage, "p", buckets, count, self.order_type)
        self.lo_hi = (bucket_start(buckets[0], count), bucket_start(buckets[-1] + 1, count))
        # oracle: key -> (order, op, version); committed files: bucket -> list of lists of
        # (key, version)
        self.oracle: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.files: dict[int, list[list[tuple]]] = {b: [] for b in buckets}
        self.state: int | None = None
        self.chains: dict[int, list[str]] | None = None
        self.version = 0
        self.known: list[tuple[int, int]] = []

    def bucket(self, hi: int) -> int:
        return int(((hi >> 32) * self.count) >> 32)

    def new_key(self) -> tuple[int, int]:
        if self.known and self.rng.random() < 0.1:  # same hi as a known key, another lo
            hi = self.known[int(self.rng.integers(len(self.known)))][0]
        else:
            hi = int(self.rng.integers(self.lo_hi[0], self.lo_hi[1] - 1, dtype=np.uint64))
        return hi, int(self.rng.integers(0, 2**64 - 1, dtype=np.uint64))

    def make_round(self, size: int):
        """Source files of a round: lists of (key, op, order, version)."""
        files = []
        for _ in range(int(self.rng.integers(1, 4))):
            rows = []
            for _ in range(size):
                u = self.rng.random()
                if self.known and u < 0.5:
                    key = self.known[int(self.rng.integers(len(self.known)))]
                else:
                    key = self.new_key()
                    self.known.append(key)
                op = OP_DELETE if self.rng.random() < 0.3 else OP_UPSERT
                order = int(self.rng.integers(0, 6))
                self.version += 1
                rows.append((key, op, order, self.version))
            files.append(rows)
        return files

    def expected_after(self, files, base_pos: int):
        return expected_after(self.oracle, files, base_pos, self.order_type is not None)

    def run_round(self, round_: int, size: int, mishap: str | None) -> None:
        files = self.make_round(size)
        base_pos = 100 * (round_ + 1)
        outputs = hash_outputs(files, base_pos, self.order_type)
        sizes = {b: tuple(len(f) for f in self.files[b]) for b in self.buckets}
        actor = self.actor
        for attempt in range(2):
            actor.fold(self.state, self.chains, sizes, 0, outputs)
            if mishap == "fold twice" and attempt == 0:
                continue  # the driver retries a fold it thought lost: the actor folds again
            actor.plan()
            if mishap == "abort after plan" and attempt == 0:
                actor.abort()
                continue
            ordinals = sorted({o for p in actor.pending.plans.values() for o, _ in p.sources})
            cut = int(self.rng.integers(0, len(ordinals) + 1))
            groups = [g for g in (ordinals[:cut], ordinals[cut:]) if g]
            rows_per_file = int(self.rng.integers(3, 40))
            chains, _ = actor.finalize(groups, rows_per_file)
            if mishap == "abort after finalize" and attempt == 0:
                actor.abort()  # e.g. a commit conflict
                continue
            break
        # materialize (simulated) and commit
        new_files = materialize(self.files, actor.pending.plans, groups, files, rows_per_file)
        self.oracle = self.expected_after(files, base_pos)
        self.files = new_files
        self.chains = {b: chains.get(b, (self.chains or {}).get(b)) for b in self.buckets}
        self.state = round_ + 1
        if mishap != "commit lost":
            actor.commit(self.state)
        self.check(round_)

    def check(self, round_: int) -> None:
        actor = self.actor
        schema = index_schema(self.order_type)
        if actor.index is None or actor.loaded_state() != self.state:
            return
        held_all = []
        for i, b in enumerate(self.buckets):
            held = actor.index.take(actor.index.in_key_order(*actor._range(i)))
            persisted = index_store.read(self.storage, self.chains[b], schema)
            assert persisted.equals(held), f"round {round_}, bucket {b}: persisted != held"
            held_all.append(held)
        held = pa.concat_tables(held_all)
        live = check_index(held, self.oracle, self.files, self.bucket,
                           self.order_type is not None, f"round {round_}")
        assert actor.index.live == live

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("group", ["one bucket", "three of five"])
def test_actor_rounds_against_oracle(tmp_path, monkeypatch, seed, ordered, group) -> None:
    monkeypatch.setattr(dedupe, "SLICE_RECORDS", 23)
    monkeypatch.setattr(dedupe, "IN_PLACE_RECORDS", 40)
    monkeypatch.setattr(live_index, "REBUILD_FRACTION", 40)
    buckets, count = ([0], 1) if group == "one bucket" else ([1, 2, 3], 5)
    sim = Sim(tmp_path, buckets, count, ordered, seed)
    rng = np.random.default_rng(seed + 100)
    mishaps = [None, None, None, "fold twice", "abort after plan", "abort after finalize",
               "commit lost"]
    for round_ in range(20):
        size = 400 if round_ == 0 else int(rng.choice([3, 5, 15, 30, 150]))
        mishap = None if round_ == 0 else mishaps[int(rng.integers(len(mishaps)))]
        sim.run_round(round_, size, mishap)
    # a fresh actor (a restarted one) loads the same index
    fresh = DedupeActor(sim.storage, "p", buckets, count, sim.order_type)
    fresh._ensure(sim.state, sim.chains)
    if sim.actor.index is not None and sim.actor.loaded_state() == sim.state:
        assert fresh.index.sorted_table().equals(sim.actor.index.sorted_table())
