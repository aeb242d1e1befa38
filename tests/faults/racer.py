"""A driver process for race tests: ``python -m tests.faults.racer URL``.

Starts a local runtime (one CPU) with its workers warm, says ``{"ready": true}``, then answers
each ``compact`` line on stdin with one JSON line: the round's outcome. Two racers told to
compact at the same moment plan from the same snapshot, as two schedulers on two machines would.
"""

from __future__ import annotations

import json
import sys

import runtime
from compactor import CommitConflict, open_table
from compactor.compaction import compact_partition
from compactor.pipeline.tasks import warm_up


def main(url: str) -> None:
    with runtime.init("local", num_cpus=1):
        runtime.get([warm_up.remote() for _ in range(2)])
        table = open_table(url)
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() != "compact":
                continue
            try:
                result = compact_partition(table, table.partition(), target_file_size=20_000)
                answer = {"committed": result.committed, "position": result.position,
                          "rows_in": result.rows_in, "message": result.message}
            except CommitConflict as e:
                answer = {"committed": False, "conflict": True, "error": str(e)}
            except Exception as e:
                answer = {"committed": False, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
