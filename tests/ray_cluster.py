"""What the multi-node Ray tests share: fast node-failure detection and the machine's Ray record.

The ``cluster`` tests (``ray.cluster_utils.Cluster``: a head and worker nodes on this machine)
run in a pytest invocation of their own, ``pytest -m cluster``: a process is connected to one
Ray at a time, and the rest of the suite shares one Ray instance per session.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import ray
from ray._common.utils import get_ray_address_file

GiB = 1 << 30
# Ray's defaults take ~30 s to declare a killed node dead; a second or three is enough here.
FAST_NODE_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


def check_no_other_ray() -> None:
    assert not ray.is_initialized(), (
        "this process is already connected to a Ray instance; the cluster tests run in a "
        "pytest invocation of their own: pytest -m cluster")


@contextlib.contextmanager
def machine_ray_address_kept() -> Iterator[None]:
    """Undo what Cluster does to the machine's record of "the" Ray cluster: it records its own
    address on start (so that a bare ``ray.init()`` anywhere on this machine would join this
    test's cluster) and deletes the record on shutdown (even one a `ray start` wrote)."""
    record = Path(get_ray_address_file(None))
    saved = record.read_text() if record.exists() else None
    try:
        yield
    finally:
        if saved is None:
            record.unlink(missing_ok=True)
        else:
            record.write_text(saved)
