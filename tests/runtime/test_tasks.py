"""Tasks: submission, arguments, results, errors and retries (every backend)."""

from __future__ import annotations

import os
import pickle
import signal
import time
from pathlib import Path

import pytest

import runtime
from runtime import RemoteTraceback


@runtime.remote
def square(x: int) -> int:
    return x * x


@runtime.remote
def add(*xs: int, extra: int = 0) -> int:
    return sum(xs) + extra


@runtime.remote
def describe(value: object) -> str:
    return repr(value)


@runtime.remote
def make_ref(x: int) -> object:
    return square.remote(x)


@runtime.remote
def fan_out(n: int) -> int:
    return sum(runtime.get([square.remote(i) for i in range(n)]))


class Boom(ValueError):
    pass


@runtime.remote
def explode(msg: str) -> None:
    raise Boom(msg)


@runtime.remote(max_retries=0)
def flaky(counter: str, failures: int, exc_name: str) -> int:
    """Fails ``failures`` times (counted in a file), then returns the attempt number."""
    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt <= failures:
        raise {"Boom": Boom, "KeyError": KeyError}[exc_name](f"attempt {attempt}")
    return attempt


@runtime.remote
def die_once(marker: str) -> int:
    """Kills its own worker process the first time it runs; returns its pid after."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@runtime.remote
def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def test_remote_returns_ref_at_once_and_get_returns_value(rt):
    start = time.monotonic()
    ref = sleep_then.remote(1.0, "late")
    assert isinstance(ref, runtime.ObjectRef)
    assert time.monotonic() - start < 0.5
    assert runtime.get(ref) == "late"
    assert runtime.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]


def test_calling_remote_function_directly_is_a_type_error(rt):
    with pytest.raises(TypeError, match=r"square\.remote\("):
        square(3)


def test_kwargs_and_varargs(rt):
    assert runtime.get(add.remote(1, 2, 3, extra=10)) == 16


def test_refs_in_args_are_resolved_also_inside_lists_and_dicts(rt):
    a, b = square.remote(2), square.remote(3)
    assert runtime.get(add.remote(a, b)) == 13
    assert runtime.get(describe.remote([a, {"k": b}, (a,)])) == "[4, {'k': 9}, (4,)]"
    assert runtime.get(add.remote(runtime.put(5), extra=a)) == 9


def test_tasks_can_return_refs_and_submit_tasks(rt):
    inner = runtime.get(make_ref.remote(7))
    assert isinstance(inner, runtime.ObjectRef)
    assert runtime.get(inner) == 49
    assert runtime.get(fan_out.remote(10)) == sum(i * i for i in range(10))


def test_application_error_is_reraised_with_remote_traceback(rt):
    with pytest.raises(Boom, match="kaboom") as info:
        runtime.get(explode.remote("kaboom"))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "explode" in str(cause) and "raise Boom(msg)" in str(cause)


def test_error_of_a_dependency_propagates(rt):
    with pytest.raises(Boom, match="upstream"):
        runtime.get(square.remote(explode.remote("upstream")))


def test_application_errors_are_not_retried_by_default(rt, tmp_path):
    counter = tmp_path / "n"
    with pytest.raises(Boom, match="attempt 1"):
        runtime.get(flaky.options(max_retries=3).remote(str(counter), 1, "Boom"))
    assert counter.read_text() == "1"


def test_retry_exceptions_true_retries_up_to_max_retries(rt, tmp_path):
    ok = flaky.options(max_retries=2, retry_exceptions=True)
    assert runtime.get(ok.remote(str(tmp_path / "a"), 2, "Boom")) == 3
    with pytest.raises(Boom, match="attempt 3"):
        runtime.get(ok.remote(str(tmp_path / "b"), 5, "Boom"))
    assert (tmp_path / "b").read_text() == "3"


def test_retry_exceptions_list_retries_only_listed_types(rt, tmp_path):
    only_boom = flaky.options(max_retries=3, retry_exceptions=[Boom])
    assert runtime.get(only_boom.remote(str(tmp_path / "a"), 1, "Boom")) == 2
    with pytest.raises(KeyError):
        runtime.get(only_boom.remote(str(tmp_path / "b"), 1, "KeyError"))
    assert (tmp_path / "b").read_text() == "1"


def test_killed_worker_is_retried_on_a_fresh_worker(rt, tmp_path):
    marker = tmp_path / "died"
    pid = runtime.get(die_once.options(max_retries=1).remote(str(marker)))
    assert marker.exists()
    assert pid != int(marker.read_text())


def test_killed_worker_without_retries_raises_worker_crashed(rt, tmp_path):
    with pytest.raises(runtime.WorkerCrashedError):
        runtime.get(die_once.options(max_retries=0).remote(str(tmp_path / "died")))


def test_get_timeout(rt):
    ref = sleep_then.remote(5)
    start = time.monotonic()
    with pytest.raises(runtime.GetTimeoutError) as info:
        runtime.get(ref, timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - start < 3
    runtime.cancel(ref)


def test_wait_splits_ready_and_not_ready_in_input_order(rt):
    slow = sleep_then.remote(5, "slow")
    fast = [square.remote(i) for i in range(3)]
    refs = [slow, *fast]
    ready, not_ready = runtime.wait(refs, num_returns=3, timeout=4)
    assert ready == fast and not_ready == [slow]
    ready, not_ready = runtime.wait(refs, num_returns=4, timeout=0.2)
    assert slow in not_ready and len(ready) == 3
    with pytest.raises(ValueError, match="num_returns"):
        runtime.wait(refs, num_returns=5)
    runtime.cancel(slow)


def test_cancel_queued_and_running_tasks(rt):
    cpus = int(runtime.cluster_resources()["CPU"])
    running = [sleep_then.remote(30) for _ in range(cpus)]
    time.sleep(0.5)
    queued = sleep_then.remote(30)
    runtime.cancel(queued)
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(queued, timeout=10)
    runtime.cancel(running[0], force=True)
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(running[0], timeout=10)
    for r in running[1:]:
        runtime.cancel(r, force=True)


def test_remote_wrappers_refs_and_errors_pickle(rt):
    ref = square.remote(4)
    assert runtime.get(pickle.loads(pickle.dumps(ref))) == 16
    again = pickle.loads(pickle.dumps(square))
    assert runtime.get(again.remote(5)) == 25
    for err in (runtime.WorkerCrashedError("x"), runtime.ActorDiedError("y"),
                runtime.GetTimeoutError("z"), RemoteTraceback("tb")):
        assert str(pickle.loads(pickle.dumps(err))) == str(err)
