"""Seeded trials: a partition's change stream, a round hit by a fault, and the verdict.

A trial builds a random stream (upserts, deletes, CDC; sometimes compacted once already), runs a
round while something is killed at a random point, then decides:

- ``completed``    the round committed: the state is the oracle's;
- ``rolled_back``  the round failed, and nothing was published: the partition is at the same
                   commit, reads the same rows, and a rerun converges to the oracle's state;
- ``committed_but_failed``  the round raised although its commit landed (the state is checked
                   against the oracle all the same); reported by the tests as a finding.

``Stream`` is ``tests.compactor.test_compaction.Scenario`` over a table opened by the trial (so
S3 tables can carry an endpoint), and counts the rows it checks against the oracle.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from compactor import Table, create_table
from compactor.compaction import compact_partition
from compactor.reader import read_partition
from tests.compactor.test_compaction import SCHEMA, Scenario
from tests.faults.conftest import Figures
from tests.oracle import expected_state

OP_SCHEMA = SCHEMA.append(pa.field("op", pa.string()))


class Stream(Scenario):
    """A Scenario over an existing table; ``checked`` counts rows verified against the oracle."""

    def __init__(self, table: Table, figures: Figures | None = None) -> None:
        self.table = table
        self.part = table.partition()
        self.key, self.order_by = list(table.primary_key), table.ordering_column
        self.deltas: list[tuple[str, pa.Table]] = []
        self.figures = figures
        self.lsn = 0

    @classmethod
    def new(cls, url: str, figures: Figures | None = None, *, buckets: int = 4,
            storage_options: dict[str, Any] | None = None) -> Stream:
        """A stream over a new table of ``SCHEMA`` keyed by ``id``, ordered by ``lsn``."""
        return cls(create_table(url, SCHEMA, primary_key=["id"], ordering_column="lsn",
                                bucket_count=buckets, storage_options=storage_options),
                   figures)

    def check(self) -> None:
        super().check()
        if self.figures is not None:
            expected = expected_state(self.deltas, primary_key=self.key, order_by=self.order_by,
                                      op_column="op")
            self.figures.rows_verified += expected.num_rows

    def random_deltas(self, rng: random.Random, count: int, rows: int, keys: int) -> None:
        """``count`` deltas of about ``rows`` rows over ``keys`` keys: mostly upserts, some
        deletes and CDC, with an ordering column that sometimes goes back in time."""
        gen = np.random.default_rng(rng.randrange(2**32))
        for _ in range(count):
            n = max(1, int(rows * rng.uniform(0.5, 1.5)))
            ids = gen.integers(0, keys, n)
            lsn = self.lsn + gen.integers(-n // 4, n, n) if rng.random() < 0.3 else \
                np.arange(self.lsn, self.lsn + n)
            self.lsn += n
            kind = rng.choices(["upsert", "delete", "cdc"], [6, 2, 2])[0] if self.deltas \
                else "upsert"  # the first delta defines the columns the oracle knows
            if kind == "upsert":
                self.upsert(pa.table({"id": ids, "v": [f"u{self.lsn}-{i}" for i in range(n)],
                                      "lsn": lsn}, schema=SCHEMA))
            elif kind == "delete":
                self.delete(pa.table({"id": ids[: max(1, n // 5)], "lsn": lsn[: max(1, n // 5)]}))
            else:
                ops = gen.choice(np.array(["I", "U", "D"]), n, p=[0.4, 0.4, 0.2])
                self.cdc(pa.table({"id": ids, "v": [f"c{self.lsn}-{i}" for i in range(n)],
                                   "lsn": lsn, "op": ops}, schema=OP_SCHEMA))


@dataclass(frozen=True)
class Verdict:
    outcome: str  # completed | rolled_back | committed_but_failed
    error: str = ""
    error_type: str = ""

    @property
    def label(self) -> str:
        return f"{self.outcome} ({self.error_type})" if self.error_type else self.outcome


def run_round(stream: Stream, round_: Callable[[], object]) -> Verdict:
    """Run ``round_`` (a compaction of ``stream``'s partition that may be hit by a fault) and
    check the outcome: the oracle's state, or nothing published and a rerun that converges."""
    part = stream.part
    version = part.version()
    snapshot = part.snapshot()
    before = read_partition(stream.table, part)
    try:
        round_()
    except Exception as e:  # the fault made the round fail: nothing may have been published
        error = f"{type(e).__name__}: {e}"
        after = part.snapshot()
        if after.version != version:
            compactions = [n for n in range(version + 1, after.version + 1)
                           if part.snapshot(n).compacted is not snapshot.compacted
                           and part.snapshot(n).compacted != snapshot.compacted]
            assert compactions, f"commits appeared, none of them a compaction: {error}"
            stream.check()
            return Verdict("committed_but_failed", error, type(e).__name__)
        assert read_partition(stream.table, part).equals(before), "a failed round changed rows"
        rerun = compact_partition(stream.table, part, target_file_size=20_000)
        assert rerun.committed, rerun
        stream.check()
        return Verdict("rolled_back", error, type(e).__name__)
    assert part.version() == version + 1, "a round that returned committed more than once"
    stream.check()
    return Verdict("completed")
