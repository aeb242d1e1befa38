"""The benchmark scripts' modules (``benchmarks/`` is a folder of scripts, not a package)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_modules() -> Iterator[None]:
    """Puts ``benchmarks/`` first on ``sys.path`` (as running a script there does)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield
    finally:
        sys.path.remove(str(BENCHMARKS))
