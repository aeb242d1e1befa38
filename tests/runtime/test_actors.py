"""Actors: state, ordering, concurrency, names, death and restarts (every backend)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import runtime


@runtime.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start
        self.log: list[int] = []

    def inc(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def record(self, i: int) -> None:
        self.log.append(i)

    def history(self) -> list[int]:
        return self.log

    def pid(self) -> int:
        return os.getpid()

    def crash(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


@runtime.remote
class Meeting:
    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=5)

    def meet(self) -> str:
        self.barrier.wait()
        return "met"


@runtime.remote
class Broken:
    def __init__(self) -> None:
        raise RuntimeError("cannot start")

    def ping(self) -> str:
        return "pong"


@runtime.remote
def call_counter(counter: object, n: int) -> list[int]:
    return runtime.get([counter.inc.remote() for _ in range(n)])  # type: ignore[attr-defined]


@runtime.remote
def record_from_task(counter: object, start: int, n: int) -> None:
    runtime.get([counter.record.remote(i) for i in range(start, start + n)])  # type: ignore[attr-defined]


def test_actor_keeps_state_between_calls(rt):
    c = Counter.remote(10)
    assert runtime.get(c.inc.remote()) == 11
    assert runtime.get(c.inc.remote(5)) == 16


def test_calls_run_in_submission_order_per_caller(rt):
    c = Counter.remote()
    for i in range(200):
        c.record.remote(i)
    assert runtime.get(c.history.remote()) == list(range(200))
    c2 = Counter.remote()
    runtime.get(record_from_task.remote(c2, 0, 100))
    assert runtime.get(c2.history.remote()) == list(range(100))


def test_direct_calls_are_type_errors(rt):
    with pytest.raises(TypeError, match=r"Counter\.remote\("):
        Counter()
    c = Counter.remote()
    with pytest.raises(TypeError, match=r"\.inc\.remote\("):
        c.inc()
    with pytest.raises(AttributeError, match="no method"):
        c.nope.remote()


def test_actor_handles_can_be_passed_to_tasks(rt):
    c = Counter.remote()
    assert runtime.get(call_counter.remote(c, 3)) == [1, 2, 3]
    assert runtime.get(c.inc.remote()) == 4


def test_max_concurrency_runs_calls_at_once(rt):
    m = Meeting.options(max_concurrency=2).remote()
    assert runtime.get([m.meet.remote(), m.meet.remote()], timeout=20) == ["met", "met"]


def test_named_actors(rt):
    c = Counter.options(name="the-counter").remote(100)
    same = runtime.get_actor("the-counter")
    assert runtime.get(same.inc.remote()) == 101
    assert runtime.get(c.inc.remote()) == 102
    with pytest.raises(ValueError, match="the-counter"):
        Counter.options(name="the-counter").remote()
    with pytest.raises(ValueError, match="no-such-actor"):
        runtime.get_actor("no-such-actor")


def test_constructor_failure_makes_calls_raise_actor_died(rt):
    b = Broken.remote()
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(b.ping.remote(), timeout=30)


def test_killed_actor_restarts_with_constructor_rerun(rt):
    c = Counter.options(max_restarts=1).remote(5)
    assert runtime.get(c.inc.remote()) == 6
    first_pid = runtime.get(c.pid.remote())
    os.kill(first_pid, signal.SIGKILL)
    value = _call_after_restart(c)
    assert value == 6  # state came back from the constructor, not from before
    assert runtime.get(c.pid.remote()) != first_pid
    os.kill(runtime.get(c.pid.remote()), signal.SIGKILL)
    with pytest.raises(runtime.ActorDiedError):
        for _ in range(50):
            runtime.get(c.inc.remote(), timeout=30)
            time.sleep(0.1)


def _call_after_restart(c: object) -> int:
    """The call that was in flight when the actor died may fail; later ones reach the new one."""
    deadline = time.monotonic() + 30
    while True:
        try:
            value: int = runtime.get(c.inc.remote(), timeout=30)  # type: ignore[attr-defined]
            return value
        except runtime.ActorDiedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_actor_without_restarts_dies_for_good(rt):
    c = Counter.remote()
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(c.crash.remote(), timeout=30)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(c.inc.remote(), timeout=30)


def test_kill_stops_the_actor(rt):
    c = Counter.options(max_restarts=3).remote()
    assert runtime.get(c.inc.remote()) == 1
    runtime.kill(c)
    with pytest.raises(runtime.ActorDiedError):
        for _ in range(50):
            runtime.get(c.inc.remote(), timeout=30)
            time.sleep(0.1)
