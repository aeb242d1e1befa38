"""Index chains of moves files and deltas (``index_store`` moves, ``DedupeActor.finalize``):
the index read back from a persisted chain is the one the actor holds, and a restarted actor
(a fresh one loading the chain) compacts later rounds as correctly as a warm one.

An actor is driven round after round against a simulated materialize (each task writes its
buckets' rows in ordinal order, a new file every ``rows_per_file`` rows) and a plain-Python
oracle of the merge rule; every committed state is checked: each live key's entry points at
a row of the simulated files holding its winning version, and no file holds another row."""

from __future__ import annotations

import itertools

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
    """One actor (group 0) of ``buckets`` of ``count``, its simulated files and an oracle."""

    def __init__(self, tmp_path, buckets, count, ordered, seed):
        self.storage = Storage(f"file://{tmp_path}")
        self.buckets, self.count = buckets, count
        self.order_type = pa.int64() if ordered else None
        self.rng = np.random.default_rng(seed)
        self.actor = self.new_actor()
        self.lo_hi = (bucket_start(buckets[0], count),
                      bucket_start(buckets[-1] + 1, count) if buckets[-1] + 1 < count
                      else 2**64)
        self.oracle: dict[tuple[int, int], tuple[int, int, int]] = {}  # key: order, op, version
        self.files: dict[int, list[list[tuple]]] = {b: [] for b in buckets}
        self.state: int | None = None
        self.chains: dict[int, list[str]] | None = None
        self.version = 0
        self.known: list[tuple[int, int]] = []
        self.moves_seen = 0
        self.renumbered = 0
        self.empty_lost = 0

    def new_actor(self) -> DedupeActor:
        return DedupeActor(self.storage, "p", self.buckets, self.count, self.order_type)

    def bucket(self, hi: int) -> int:
        return int(((hi >> 32) * self.count) >> 32)

    def new_key(self):
        hi = int(self.rng.integers(self.lo_hi[0], self.lo_hi[1] - 1, dtype=np.uint64))
        return hi, int(self.rng.integers(0, 2**64 - 1, dtype=np.uint64))

    def make_round(self, size: int, update_share: float, delete_share: float):
        files = []
        for _ in range(int(self.rng.integers(1, 4))):
            rows = []
            for _ in range(size):
                if self.known and self.rng.random() < update_share:
                    key = self.known[int(self.rng.integers(len(self.known)))]
                else:
                    key = self.new_key()
                    self.known.append(key)
                op = OP_DELETE if self.rng.random() < delete_share else OP_UPSERT
                order = int(self.rng.integers(0, 6))
                self.version += 1
                rows.append((key, op, order, self.version))
            files.append(rows)
        return files

    def expected_after(self, files, base_pos: int):
        return expected_after(self.oracle, files, base_pos, self.order_type is not None)

    def tasks(self, plans, lost_files):
        """Materialize tasks: the sources with rows to write (ordinal order) cut into 1 to 4
        runs of consecutive files at random; sometimes the lost files without surviving rows
        are listed too (the driver lists only files with rows: either must do)."""
        ordinals = sorted({o for p in plans.values() for o, _ in p.sources})
        if self.rng.random() < 0.3:
            ordinals = sorted(set(ordinals) | set(lost_files))
        n = len(ordinals)
        k = int(self.rng.integers(1, 5))
        cuts = sorted(set(self.rng.integers(0, n + 1, k - 1).tolist()) | {0, n})
        return [ordinals[a:b] for a, b in itertools.pairwise(cuts) if b > a] or [[]]

    def run_round(self, round_: int, size: int, update_share: float = 0.5,
                  delete_share: float = 0.3, restart: bool = False, files=None) -> None:
        if files is None:
            files = self.make_round(size, update_share, delete_share)
        base_pos = 100 * (round_ + 1)
        outputs = hash_outputs(files, base_pos, self.order_type)
        sizes = {b: tuple(len(f) for f in self.files[b]) for b in self.buckets}
        if restart:  # a restarted actor: loads the committed state's chains
            self.actor = self.new_actor()
        actor = self.actor
        actor.fold(self.state, self.chains, sizes, 0, outputs)
        actor.plan()
        plans = actor.pending.plans
        lost = sorted(b << 16 | i for b, p in plans.items() for i in p.lost)
        with_rows = {o for p in plans.values() for o, _ in p.sources}
        self.empty_lost += len(set(lost) - with_rows)
        self.renumbered += sum(at != pos for p in plans.values() for at, pos in enumerate(p.keep))
        groups = self.tasks(plans, lost)
        rows_per_file = int(self.rng.choice([1, 2, 3, 7, 40]))
        chains, _ = actor.finalize(groups, rows_per_file)
        self.moves_seen += sum(index_store.is_moves(r) for c in chains.values() for r in c[-2:])
        # materialize (simulated) and commit
        new_files = materialize(self.files, plans, groups, files, rows_per_file)
        self.oracle = self.expected_after(files, base_pos)
        self.files = new_files
        self.chains = {b: chains.get(b, (self.chains or {}).get(b)) for b in self.buckets}
        self.state = round_ + 1
        actor.commit(self.state)
        self.check(round_)

    def check(self, round_: int) -> None:
        """The held index against the oracle and the files; the persisted chains, read and
        loaded by a fresh actor, the same."""
        schema = index_schema(self.order_type)
        held = self.actor.index.sorted_table()
        self.check_index(held, f"round {round_}, held")
        for i, b in enumerate(self.buckets):
            mine = self.actor.index.take(self.actor.index.in_key_order(*self.actor._range(i)))
            persisted = index_store.read(self.storage, self.chains[b], schema)
            assert persisted.equals(mine), f"round {round_}, bucket {b}: persisted != held"
        fresh = self.new_actor()
        fresh._ensure(self.state, self.chains)
        self.check_index(fresh.index.sorted_table(), f"round {round_}, reloaded")

    def check_index(self, held: pa.Table, where: str) -> None:
        check_index(held, self.oracle, self.files, self.bucket, self.order_type is not None,
                    where)

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("group", ["one bucket", "four of seven"])
def test_chains_of_moves_read_back_as_held_round_after_round(
        tmp_path, monkeypatch, seed, ordered, group) -> None:
    """Small rounds (updates and deletes of known keys: files lose rows, kept ones behind them
    move up) mixed with big ones (merged as a copy), rebuilt indexes, chains re-based every
    few rounds, several tasks per round; sometimes the actor restarts before a round."""
    monkeypatch.setattr(dedupe, "SLICE_RECORDS", 23)
    monkeypatch.setattr(dedupe, "IN_PLACE_RECORDS", 60)
    monkeypatch.setattr(live_index, "REBUILD_FRACTION", 20)
    monkeypatch.setattr(index_store, "MAX_CHAIN", 4)
    buckets, count = ([0], 1) if group == "one bucket" else ([2, 3, 4, 5], 7)
    sim = Sim(tmp_path, buckets, count, ordered, seed)
    rng = np.random.default_rng(seed + 7)
    for round_ in range(14):
        size = 300 if round_ == 0 else int(rng.choice([2, 4, 10, 25, 200]))
        sim.run_round(round_, size, restart=round_ > 0 and rng.random() < 0.3)
    assert sim.moves_seen >= 3 and sim.renumbered >= 3 and sim.empty_lost >= 1


@pytest.mark.parametrize("ordered", [False, True])
def test_long_chains_of_small_rounds_without_rebasing(tmp_path, monkeypatch, ordered) -> None:
    """Every round small (in place), no chain re-based (MAX_CHAIN high): a chain piles many
    moves files on one base; a fresh actor loads it each round."""
    monkeypatch.setattr(index_store, "MAX_CHAIN", 1000)
    monkeypatch.setattr(live_index, "REBUILD_FRACTION", 4)
    sim = Sim(tmp_path, [1, 2, 3], 4, ordered, 5)
    rng = np.random.default_rng(3)
    for round_ in range(25):
        size = 400 if round_ == 0 else int(rng.choice([1, 3, 6]))
        sim.run_round(round_, size, update_share=0.9, delete_share=0.2,
                      restart=bool(rng.random() < 0.5))
    assert max(len(c) for c in sim.chains.values()) > 20
    # every key deleted (with an ordering column: at the highest order, so every delete wins):
    # each file of each bucket loses all its rows; then keys come back
    doomed = []
    for key in sim.known:
        sim.version += 1
        doomed.append((key, OP_DELETE, 5, sim.version))
    sim.run_round(25, 0, files=[doomed])
    assert all(not files for files in sim.files.values())
    for round_ in range(26, 30):
        sim.run_round(round_, 20, update_share=0.9, delete_share=0.1,
                      restart=bool(rng.random() < 0.5))
    assert sim.moves_seen >= 10 and sim.renumbered >= 10


@pytest.mark.parametrize("order_by", [None, "lsn"])
def test_rounds_rewriting_old_files_end_to_end_with_restarted_actors(tmp_path, order_by):
    """Rounds update and delete keys spread over a bucket's old files (each of them loses a
    row: rewritten; the ones behind kept files move up) and add new ones; the actors of a new
    runtime reload the chains of moves files. Checked against the oracle, and no round may
    have rebuilt its index (a chain refused as unusable)."""
    import runtime
    from tests.compactor.test_compaction import SCHEMA, Scenario

    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], order_by, buckets=3)
    rng = np.random.default_rng(21)
    s.upsert(pa.table({"id": np.arange(3000), "v": ["base"] * 3000, "lsn": np.arange(3000)},
                      schema=SCHEMA))
    lsn = 3000

    def changes(tag: str) -> None:
        nonlocal lsn
        ids = np.concatenate([rng.choice(3000, 12, replace=False), rng.integers(3000, 3400, 30)])
        s.upsert(pa.table({"id": ids, "v": [tag] * len(ids),
                           "lsn": np.arange(lsn, lsn + len(ids))}, schema=SCHEMA))
        lsn += len(ids)
        s.delete(pa.table({"id": rng.choice(3400, 8, replace=False), "lsn": np.full(8, lsn)}))
        lsn += 1

    moves = 0
    for rounds in (3, 1, 1):  # a runtime per batch of rounds: the later ones reload
        with runtime.init("local", num_cpus=2):
            for r in range(rounds):
                if lsn > 3000 or r:
                    changes(f"r{lsn}")
                result = s.compact_and_check(target_file_size=3000)
                assert result.committed and not result.rebased  # (no chain refused)
                chains = index_store.paths_of(s.part.snapshot().compacted) or []
                moves = max(moves, sum(index_store.is_moves(p) for c in chains for p in c))
    assert moves >= 2


def _entries(keys, file, row, op=None) -> pa.Table:
    n = len(keys)
    return pa.table({"hi": pa.array(keys, pa.uint64()), "lo": pa.array(keys, pa.uint64()),
                     "file": pa.array(file, pa.int32()), "row": pa.array(row, pa.int32()),
                     "op": pa.array(op or [OP_UPSERT] * n, pa.int8())}, schema=index_schema())


def test_moves_of_two_rounds_apply_at_once_and_to_earlier_deltas(tmp_path):
    """Round 1 rewrites file 0 (a row lost) while files 1 and 2 move up to 0 and 1, and its
    rewritten rows go to file 2: an entry must move once, by its file's old number, not again
    by the number another file takes. Round 2 moves the files again, round 1's delta with
    them (key 101, written to file 3 by round 1, is in file 2 after round 2)."""
    storage = Storage(f"file://{tmp_path}")
    b = 5 << 16
    index_store.write(storage, "i/base.arrow", _entries(
        [100, 101, 102, 110, 111, 120, 121], [b, b, b, b | 1, b | 1, b | 2, b | 2],
        [0, 1, 2, 0, 1, 0, 1]))
    index_store.write_moves(storage, "i/moves-1.arrow", [
        index_store.Move(b | 1, b | 0), index_store.Move(b | 2, b | 1),
        index_store.Move(b | 0, b | 2, 0, np.array([True, False, True]), 2)])
    index_store.write(storage, "i/delta-1.arrow", _entries([101], [b | 3], [0]))
    round_1 = ["i/base.arrow", "i/moves-1.arrow", "i/delta-1.arrow"]
    expected = {100: (b | 2, 0), 102: (b | 2, 1), 101: (b | 3, 0), 110: (b, 0), 111: (b, 1),
                120: (b | 1, 0), 121: (b | 1, 1)}

    def located(chain):
        t = index_store.read(storage, chain, index_schema())
        assert t.column("hi").to_pylist() == sorted(t.column("hi").to_pylist())
        return dict(zip(t.column("hi").to_pylist(),
                        zip(t.column("file").to_pylist(), t.column("row").to_pylist(),
                            strict=True), strict=True))

    assert located(round_1) == expected
    # round 2: key 110 deleted; file 0 (110, 111) rewritten, 111 at place 5 of its task's
    # rows, 3 per file from file 4 on; files 1, 2, 3 move up to 0, 1, 2
    index_store.write_moves(storage, "i/moves-2.arrow", [
        index_store.Move(b | 0, b | 4, 5, np.array([False, True]), 3),
        index_store.Move(b | 1, b | 0), index_store.Move(b | 2, b | 1),
        index_store.Move(b | 3, b | 2)])
    index_store.write(storage, "i/delta-2.arrow", index_store.absent(
        np.array([(110, 110)], dtype=index_store.KEY), index_schema()))
    expected = {111: (b | 5, 2), 120: (b, 0), 121: (b, 1), 100: (b | 1, 0), 102: (b | 1, 1),
                101: (b | 2, 0)}
    assert located([*round_1, "i/moves-2.arrow", "i/delta-2.arrow"]) == expected
    assert index_store.rounds([*round_1, "i/moves-2.arrow", "i/delta-2.arrow"]) == 3
