"""Concurrency: appends during rounds lose nothing; racing rounds commit exactly once.

- A writer appends continuously while 10 rounds run: every delta is folded in by exactly one
  round (the watermarks split the stream), the rounds' ``rows_in`` add up to every row appended,
  and the final state is the oracle's.
- Two driver processes (two runtimes, as two schedulers on two machines) race on one partition,
  round after round: exactly one commits each time; the other gets a CommitConflict (or, if it
  planned after the winner committed, finds nothing to do), and nothing is duplicated or lost.
- Two rounds racing on one partition inside one runtime (two threads of one process).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from compactor import CommitConflict
from compactor.compaction import compact_partition
from compactor.reader import read_partition
from tests.faults.trials import Stream
from tests.oracle import assert_tables_equal, expected_state

ROUNDS = 10
REPO = Path(__file__).resolve().parents[2]


def _folded_exactly_once(stream: Stream) -> int:
    """Check from the log that compaction watermarks split the delta stream: each delta is
    folded by exactly the first round whose watermark reaches it, and that round's recorded
    ``rows_in`` is the rows of those deltas. Returns the rows folded in."""
    watermark, pending_rows, folded = 0, 0, 0
    rows_at: dict[int, int] = {}
    for number, entry in enumerate(stream.part.log.read_from(1), 1):
        if entry["kind"] == "delta":
            rows_at[number] = sum(f["rows"] for f in entry["delta"]["files"])
            continue
        state = entry["compaction"]
        assert state["high_watermark"] > watermark, f"commit {number} folds nothing new"
        rows = sum(n for p, n in rows_at.items() if watermark < p <= state["high_watermark"])
        assert state["metrics"]["rows_in"] == rows, f"commit {number} misses deltas"
        watermark = state["high_watermark"]
        folded += rows
    pending_rows = sum(n for p, n in rows_at.items() if p > watermark)
    assert folded + pending_rows == sum(rows_at.values())
    return folded


def test_appends_during_rounds_are_never_lost(rt, tmp_path, fault_seed, figures):
    stream = Stream.new(f"file://{tmp_path}/t", figures, buckets=4)
    table = stream.table
    rng = random.Random(fault_seed)
    stream.random_deltas(rng, 2, 2_000, 5_000)
    stop = threading.Event()
    errors: list[BaseException] = []
    appended_rows = [0]

    def writer() -> None:
        gen = random.Random(fault_seed + 7)
        try:
            while not stop.is_set():
                before = len(stream.deltas)
                stream.random_deltas(gen, 1, 1_000, 5_000)
                appended_rows[0] += sum(d.num_rows for _, d in stream.deltas[before:])
                time.sleep(0.03)  # a steady stream: about 20 deltas a second
        except BaseException as e:
            errors.append(e)

    def with_an_append_in_flight() -> Callable[[str, int, int, int, int], None]:
        """A progress callback holding the round, once it has planned (its snapshot taken),
        until the writer appended two more deltas (one may have been committed before the plan
        but not yet counted): rounds can outrun the writer, and every round must have appends
        above its watermark."""
        planned: list[int] = []

        def progress(step: str, done: int, *_: int) -> None:
            if step == "hash_bucket" and not planned:
                planned.append(len(stream.deltas))
            if step == "materialize" and done == 0:
                deadline = time.monotonic() + 30
                while len(stream.deltas) < planned[0] + 2 and not errors:
                    assert time.monotonic() < deadline, "the writer appended nothing in 30 s"
                    time.sleep(0.005)
        return progress

    thread = threading.Thread(target=writer)
    thread.start()
    committed = 0
    try:
        while committed < ROUNDS:
            result = compact_partition(table, stream.part, target_file_size=20_000,
                                       progress=with_an_append_in_flight())
            committed += result.committed
            if not result.committed:
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    snapshot = stream.part.snapshot()
    assert snapshot.deltas, "the writer appended nothing during the last round"
    compact_partition(table, stream.part, target_file_size=20_000)
    total = sum(d.num_rows for _, d in stream.deltas)
    assert _folded_exactly_once(stream) == total
    stream.check()
    figures.trials["writer during 10 rounds"] += 1
    figures.notes.append(f"writer during {ROUNDS} rounds: {len(stream.deltas)} deltas, "
                         f"{appended_rows[0]:,} rows appended while rounds ran, all folded in "
                         "exactly once")


class Racer:
    """A driver process (``tests.faults.racer``) with its own warm runtime."""

    def __init__(self, url: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        self.process = subprocess.Popen([sys.executable, "-m", "tests.faults.racer", url],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=REPO)
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"racer exited with {self.process.wait()}"
        return line

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("compact\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, object]:
        return dict(json.loads(self._line()))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0


def test_two_drivers_racing_commit_exactly_once_per_round(tmp_path, fault_seed, figures):
    url = f"file://{tmp_path}/t"
    stream = Stream.new(url, figures, buckets=4)
    rng = random.Random(fault_seed)
    racers = [Racer(url), Racer(url)]
    conflicts = 0
    try:
        for race in range(ROUNDS):
            stream.random_deltas(rng, rng.randint(1, 3), 2_000, 5_000)
            version = stream.part.version()
            for racer in racers:
                racer.go()
            answers = [r.answer() for r in racers]
            winners = [a for a in answers if a["committed"]]
            assert len(winners) == 1, f"race {race}: {answers}"
            loser = next(a for a in answers if not a["committed"])
            assert loser.get("conflict") or "no pending deltas" in str(loser.get("message")), \
                f"race {race}: the loser failed otherwise: {loser}"
            conflicts += bool(loser.get("conflict"))
            assert stream.part.version() == version + 1
            stream.check()
    finally:
        for racer in racers:
            racer.close()
    assert _folded_exactly_once(stream) == sum(d.num_rows for _, d in stream.deltas)
    figures.trials["two drivers racing"] += ROUNDS
    figures.outcomes["race lost with CommitConflict"] += conflicts
    figures.outcomes["race lost with nothing to do"] += ROUNDS - conflicts


def _compact_into(stream: Stream, outcomes: list[object], i: int) -> None:
    try:
        outcomes[i] = compact_partition(stream.table, stream.part,
                                        target_file_size=20_000).committed
    except CommitConflict:
        outcomes[i] = "conflict"
    except Exception as e:
        outcomes[i] = e


def test_two_rounds_racing_in_one_runtime(rt, tmp_path, fault_seed, figures):
    stream = Stream.new(f"file://{tmp_path}/t", figures, buckets=4)
    table = stream.table
    rng = random.Random(fault_seed)
    stream.random_deltas(rng, 2, 3_000, 4_000)
    compact_partition(table, stream.part, target_file_size=20_000)
    for race in range(3 * ROUNDS):  # the interleavings that break are not every race's
        stream.random_deltas(rng, 2, 3_000, 4_000)
        outcomes: list[object] = [None, None]
        threads = [threading.Thread(target=_compact_into, args=(stream, outcomes, i))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count(True) == 1, f"race {race}: {outcomes}"
        # what the winner published is exactly the oracle's state up to its watermark
        watermark = stream.part.snapshot().high_watermark
        positions = [n for n, e in enumerate(stream.part.log.read_from(1), 1)
                     if e["kind"] == "delta"]
        folded = [d for d, p in zip(stream.deltas, positions, strict=True) if p <= watermark]
        expected = expected_state(folded, primary_key=["id"], order_by="lsn", op_column="op")
        actual = read_partition(table, stream.part)
        assert_tables_equal(actual, expected.select(actual.column_names), key=["id"])
