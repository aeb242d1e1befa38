"""The runtime wrappers of the pipeline steps, each reporting its process's peak memory."""

from __future__ import annotations

import resource
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import runtime
from compactor.pipeline.dedupe import DedupeActor
from compactor.pipeline.hash_bucket import HashInput, HashOutput, combined, hash_file
from compactor.pipeline.materialize import MaterializeOutput, materialize_group
from compactor.pipeline.tombstones import carried_tombstones

# what a runtime's workers import before they run a step (``runtime.init(preload=...)``: the
# local backend forks every worker, actors' too, from one process that imported it)
PRELOAD = (__name__,)


def peak_rss() -> int:
    """Peak resident set of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@runtime.remote
def warm_up() -> None:
    """Does nothing: running it imports this module (pyarrow, the pipeline) in a worker."""


# files of one hash task read at once: small files are mostly latency (an object store's)
HASH_READ_THREADS = 8


@runtime.remote(max_retries=3)
def hash_task(storage: Any, inputs: tuple[HashInput, ...], *args: Any) -> list[HashOutput]:
    """The records of the input (a file or a slice of one), or of several small files, read
    several at once, as one output (``hash_bucket.combined``)."""
    if len(inputs) == 1:
        outputs = [hash_file(storage, inputs[0], *args)]
    else:
        with ThreadPoolExecutor(min(HASH_READ_THREADS, len(inputs))) as pool:
            outputs = [combined(list(pool.map(lambda item: hash_file(storage, item, *args),
                                              inputs)))]
    rss = peak_rss()
    return [replace(o, peak_rss=rss) for o in outputs]


@runtime.remote(max_retries=3)
def tombstone_task(*args: Any) -> list[HashOutput]:
    """A rebase's records of the deletes an old bucket's index remembers (as a hash task's)."""
    return [replace(carried_tombstones(*args), peak_rss=peak_rss())]


@runtime.remote(max_retries=3)
def materialize_task(*args: Any) -> MaterializeOutput:
    return replace(materialize_group(*args), peak_rss=peak_rss())


class _DedupeWithMemory(DedupeActor):
    def peak_rss(self) -> int:
        return peak_rss()


Dedupe = runtime.remote(max_restarts=3)(_DedupeWithMemory)
