"""The runtime wrappers of the pipeline steps, each reporting its process's peak memory."""

from __future__ import annotations

import resource
from dataclasses import replace
from typing import Any

import runtime
from compactor.pipeline.dedupe import DedupeActor
from compactor.pipeline.hash_bucket import HashOutput, hash_file
from compactor.pipeline.materialize import MaterializeOutput, materialize_group


def peak_rss() -> int:
    """Peak resident set of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@runtime.remote
def warm_up() -> None:
    """Does nothing: running it imports this module (pyarrow, the pipeline) in a worker."""


@runtime.remote(max_retries=3)
def hash_task(*args: Any) -> HashOutput:
    return replace(hash_file(*args), peak_rss=peak_rss())


@runtime.remote(max_retries=3)
def materialize_task(*args: Any) -> MaterializeOutput:
    return replace(materialize_group(*args), peak_rss=peak_rss())


class _DedupeWithMemory(DedupeActor):
    def peak_rss(self) -> int:
        return peak_rss()


Dedupe = runtime.remote(max_restarts=3)(_DedupeWithMemory)
