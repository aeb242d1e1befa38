"""Resource-aware scheduling (every backend)."""

from __future__ import annotations

import time

import pytest

import runtime


@runtime.remote
def interval(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@runtime.remote
def nested(n: int) -> int:
    return len(runtime.get([interval.remote(0.05) for _ in range(n)]))


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_running_tasks_never_exceed_cpus(rt):
    cpus = int(runtime.cluster_resources()["CPU"])
    spans = runtime.get([interval.remote(0.3) for _ in range(3 * cpus)])
    assert max_overlap(spans) <= cpus
    two = interval.options(num_cpus=cpus)
    assert max_overlap(runtime.get([two.remote(0.2) for _ in range(3)])) == 1


def test_running_tasks_never_exceed_memory(rt):
    total = int(runtime.cluster_resources()["memory"])
    big = interval.options(memory=int(total * 0.6), num_cpus=0)
    assert max_overlap(runtime.get([big.remote(0.3) for _ in range(3)])) == 1


def test_task_that_can_never_fit_fails_at_once(rt):
    res = runtime.cluster_resources()
    with pytest.raises(runtime.UnschedulableError, match="num_cpus"):
        interval.options(num_cpus=res["CPU"] + 1).remote(0)
    with pytest.raises(runtime.UnschedulableError, match="memory"):
        interval.options(memory=int(res["memory"] * 2)).remote(0)


def test_nested_gets_do_not_deadlock_a_full_pool(rt):
    cpus = int(runtime.cluster_resources()["CPU"])
    assert runtime.get([nested.remote(2) for _ in range(2 * cpus)], timeout=60) == [2] * (2 * cpus)


def test_resources_are_reported(rt):
    total = runtime.cluster_resources()
    assert total["CPU"] >= 1 and total["memory"] > 0
    avail = runtime.available_resources()
    assert 0 <= avail["CPU"] <= total["CPU"]
    nodes = runtime.nodes()
    assert nodes and all(n["alive"] for n in nodes)
