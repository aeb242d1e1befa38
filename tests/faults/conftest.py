"""Fixtures of the fault and abuse suite, its ``--trials`` knob, and its closing figures.

``--trials N`` sets how many seeded trials the randomized tests run (default: a CI size that
keeps the whole suite to a few minutes on two cores); ``--fault-seed S`` shifts every seed, so a
long run explores other trials (``pytest tests/faults --trials 200 --fault-seed 7``). A failing
trial names its seed, and rerunning with the same options reruns it.

At the end of the run the suite prints what it did: trials, faults injected by kind, rows checked
against the oracle (``tests/oracle.py``), and failure outcomes by kind.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import runtime
from runtime.local.store import session_dirs

CI_TRIALS = 21  # a third each: task worker, dedupe actor, driver


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "fault and abuse suite (tests/faults)")
    group.addoption("--trials", type=int, default=None, metavar="N",
                    help=f"seeded trials per randomized fault test (default {CI_TRIALS})")
    group.addoption("--fault-seed", type=int, default=0, metavar="S",
                    help="added to every trial seed (default 0)")


@dataclass
class Figures:
    """What the suite did, for the closing note."""

    trials: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    rows_verified: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        def fmt(c: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

        return [f"trials: {sum(self.trials.values())} ({fmt(self.trials)})",
                f"faults injected: {sum(self.injected.values())} ({fmt(self.injected)})",
                f"outcomes: {fmt(self.outcomes)}",
                f"rows verified against the oracle: {self.rows_verified:,}", *self.notes]


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return _FIGURES


@pytest.fixture(scope="session")
def trials(request: pytest.FixtureRequest) -> int:
    value = request.config.getoption("trials", default=None)
    return CI_TRIALS if value is None else int(value)


@pytest.fixture(scope="session")
def fault_seed(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("fault_seed", default=0) or 0)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if sum(_FIGURES.trials.values()) or _FIGURES.rows_verified:
        terminalreporter.section("fault suite figures")
        for line in _FIGURES.lines():
            terminalreporter.write_line(line)


@pytest.fixture
def rt() -> Iterator[None]:
    """A local runtime of two CPUs; afterwards none of its processes or its store remain."""
    with runtime.init("local", num_cpus=2):
        backend: Any = runtime.api.current_backend()
        yield
        pids = [w.pid for w in backend.workers.values()]
        store = backend.store.root
    assert_gone(pids, [store])


def assert_gone(pids: list[int], stores: list[str], timeout: float = 10.0) -> None:
    """Every process in ``pids`` has exited (and, if it was our child, was reaped) and every
    store directory in ``stores`` is removed, within ``timeout`` seconds."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                process = psutil.Process(pid)
                # a zombie of ours was never reaped; one of another parent's is its business
                if process.status() != psutil.STATUS_ZOMBIE or process.ppid() == os.getpid():
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        left = [s for s in stores if os.path.exists(s)]
        if not alive and not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: processes {alive}, store directories {left} "
                                 f"(all store directories now: {session_dirs()})")
        time.sleep(0.05)
