"""How the runtime maps onto Ray, beyond the shared suite every backend passes.

Selecting the backend, starting or joining Ray, options as Ray resources and strategies, Ray's
errors as the runtime's own, and the runtime API inside Ray's worker processes.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.exceptions as rex

import runtime
from runtime import NodeAffinity, PlacementGroupSlot, RemoteTraceback
from runtime.ray_backend import RayBackend
from runtime.ray_translate import translate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_rt(ray_instance: None) -> Iterator[RayBackend]:
    with runtime.init("ray") as ctx:
        assert isinstance(ctx.backend, RayBackend)
        yield ctx.backend


def run_python(script: str, **env: str) -> list[str]:
    """Run ``script`` in a fresh interpreter (its own Ray connection, or none); the lines it
    printed with ``result(...)``, apart from whatever Ray streams to its stdout."""
    preamble = "def result(*values):\n    print('result:', *values, flush=True)\n"
    proc = subprocess.run(
        [sys.executable, "-c", preamble + textwrap.dedent(script)], cwd=ROOT,
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [line[len("result: "):] for line in proc.stdout.splitlines()
            if line.startswith("result: ")]


class Boom(ValueError):
    pass


class TwoArgs(Exception):
    def __init__(self, a: str, b: str) -> None:  # does not unpickle: args holds only ``a``
        super().__init__(a)
        self.b = b


@runtime.remote
def explode(msg: str) -> None:
    raise Boom(msg)


@runtime.remote
def get_inside(ref: list[runtime.ObjectRef]) -> Any:
    return runtime.get(ref[0])


@runtime.remote
def explode_unloadably() -> None:
    raise TwoArgs("a", "b")


@runtime.remote
def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


@runtime.remote
def describe(*args: Any, **kwargs: Any) -> str:
    return repr((args, kwargs))


@runtime.remote
def assigned() -> dict[str, float]:
    resources: dict[str, float] = ray.get_runtime_context().get_assigned_resources()
    return resources


@runtime.remote
def node_and_group() -> tuple[str, Any]:
    pg = ray.util.get_current_placement_group()
    return ray.get_runtime_context().get_node_id(), pg.id.hex() if pg else None


@runtime.remote
def backend_inside() -> str:
    return type(runtime.api.current_backend()).__name__


@runtime.remote
def call_named(name: str) -> int:
    return int(runtime.get(runtime.get_actor(name).inc.remote()))


@runtime.remote
def start_counter(start: int) -> runtime.ActorHandle:
    return Counter.remote(start)


@runtime.remote
def put_inside(value: object) -> runtime.ObjectRef:
    return runtime.put(value)


@runtime.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def inc(self) -> int:
        self.value += 1
        return self.value

    def pid(self) -> int:
        return os.getpid()

    def fail(self) -> None:
        raise Boom("from an actor")

    def slow(self, seconds: float) -> str:
        time.sleep(seconds)
        return "done"

    def assigned(self) -> dict[str, float]:
        resources: dict[str, float] = ray.get_runtime_context().get_assigned_resources()
        return resources


@runtime.remote
class Echo:
    def __init__(self, first: Any) -> None:
        self.first = first

    def both(self, second: Any) -> tuple[Any, Any]:
        return self.first, second


# -- selecting, starting and joining Ray ---------------------------------------------------------
def test_environment_variable_selects_ray(ray_instance: None, monkeypatch: Any) -> None:
    monkeypatch.setenv("COMPACTOR_BACKEND", "ray")
    with runtime.init() as ctx:
        assert ctx.backend_name == "ray"
        assert runtime.get(sleep_then.remote(0, "ran")) == "ran"


def test_without_ray_selecting_it_names_the_extra_to_install() -> None:
    errors = run_python("""
        import sys
        sys.modules["ray"] = None  # what an environment without Ray looks like to imports
        import runtime
        for select in (lambda: runtime.init("ray"), runtime.init):  # code, then $COMPACTOR_BACKEND
            try:
                select()
            except ImportError as e:
                result(e)
        """, COMPACTOR_BACKEND="ray")
    assert len(errors) == 2
    assert all("pip install 'compactor[ray]'" in e for e in errors)


def test_starts_its_own_ray_with_the_given_budget_and_stops_it() -> None:
    out = run_python("""
        import ray, runtime

        @runtime.remote
        def one():
            return 1

        assert not ray.is_initialized()
        with runtime.init("ray", num_cpus=1, memory=256 << 20, log_to_driver=False):
            res = runtime.cluster_resources()
            result(res["CPU"], res["memory"], runtime.get(one.remote()))
        result(ray.is_initialized())
        """)
    assert out == [f"1.0 {float(256 << 20)} 1", "False"]


def test_joins_a_running_ray_by_address(ray_instance: None) -> None:
    here = ray.get_runtime_context()
    out = run_python("""
        import ray, runtime

        @runtime.remote
        def node():
            return ray.get_runtime_context().get_node_id()

        with runtime.init("ray"):  # the address comes from $COMPACTOR_ADDRESS
            result(runtime.get(node.remote()))
        result(ray.is_initialized())
        try:
            runtime.init("ray", num_cpus=2)
        except ValueError as e:
            result("refused:", e)
        """, COMPACTOR_ADDRESS=here.gcs_address)
    node, still_connected, refused = out
    assert node == here.get_node_id() and still_connected == "False"
    assert refused.startswith("refused: num_cpus and memory size a new local Ray")
    assert ray.get(ray.put("the shared instance is still up")) == "the shared instance is still up"


def test_an_address_where_nothing_listens_fails_at_once_naming_it() -> None:
    # Ray retried a client address for 30 s, and a GCS address for many minutes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = run_python(f"""
        import time, ray, runtime
        for address in ("ray://127.0.0.1:{port}", "127.0.0.1:{port}"):
            start = time.monotonic()
            try:
                runtime.init("ray", address=address)
            except ConnectionError as e:
                result(time.monotonic() - start < 10, e)
            result(ray.is_initialized(), runtime.is_initialized())
        """)
    assert out == [
        f"True cannot reach a Ray cluster at 'ray://127.0.0.1:{port}': Connection refused",
        "False False",
        f"True cannot reach a Ray cluster at '127.0.0.1:{port}': Connection refused",
        "False False"]


def test_shutdown_leaves_a_ray_it_joined_running_and_kills_only_its_own_actors(
    ray_instance: None,
) -> None:
    @ray.remote
    class NotFromTheRuntime:
        def ping(self) -> str:
            return "pong"

    outsider = NotFromTheRuntime.remote()  # type: ignore[attr-defined]
    with runtime.init("ray"):
        mine = Counter.remote()
        assert runtime.get(mine.inc.remote()) == 1
    assert ray.is_initialized()
    with pytest.raises(rex.RayActorError):  # ray.kill takes effect soon, not at once
        for _ in range(100):
            ray.get(mine.backend_ref.inc.remote(), timeout=30)
            time.sleep(0.1)
    assert ray.get(outsider.ping.remote(), timeout=30) == "pong"
    ray.kill(outsider)


# -- errors ---------------------------------------------------------------------------------------
def test_application_errors_arrive_as_their_own_type_not_as_rays(ray_rt: RayBackend) -> None:
    failing = {
        "task": explode.remote("task"),
        "from an actor": Counter.remote().fail.remote(),
        "got in a task": get_inside.remote([explode.remote("got in a task")]),
        "argument": describe.remote({"k": [explode.remote("argument")]}),
    }
    for message, ref in failing.items():
        with pytest.raises(Boom) as info:
            runtime.get(ref)
        assert type(info.value) is Boom and str(info.value) == message
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback) and "raise Boom" in str(cause)
        assert "\x1b[" not in str(cause)  # Ray's terminal colours are stripped


def test_error_that_cannot_be_loaded_is_a_task_error(ray_rt: RayBackend) -> None:
    with pytest.raises(runtime.TaskError, match="TwoArgs"):
        runtime.get(explode_unloadably.remote())


@pytest.mark.parametrize(
    ("ray_error", "expected"),
    [
        (rex.WorkerCrashedError(), runtime.WorkerCrashedError),
        (rex.NodeDiedError("node lost"), runtime.WorkerCrashedError),
        (rex.OutOfMemoryError("killed by the memory monitor"), runtime.WorkerCrashedError),
        (rex.ActorDiedError(), runtime.ActorDiedError),
        (rex.ActorUnavailableError("restarting", None), runtime.ActorDiedError),
        (rex.TaskCancelledError(), runtime.TaskCancelledError),
        (rex.GetTimeoutError("not ready"), runtime.GetTimeoutError),
        (rex.TaskUnschedulableError("no such node"), runtime.UnschedulableError),
        (rex.ActorUnschedulableError("no such node"), runtime.UnschedulableError),
        (rex.ObjectStoreFullError("full"), runtime.ObjectStoreFullError),
        (rex.ObjectLostError("ab" * 14, None, ""), runtime.ObjectLostError),
        (rex.OwnerDiedError("ab" * 14, None, ""), runtime.ObjectLostError),
        (rex.RaySystemError("raylet gone"), runtime.RuntimeBaseError),
        (rex.RayTaskError("f", "Traceback: ...", rex.TaskCancelledError()),
         runtime.TaskCancelledError),
    ],
)
def test_ray_errors_become_the_runtimes(ray_error: rex.RayError, expected: type) -> None:
    error = translate(ray_error)
    assert type(error) is expected
    assert not isinstance(error, rex.RayError)


# -- options, scheduling and resources -------------------------------------------------------------
def test_cpus_and_memory_are_reserved_as_ray_resources(ray_rt: RayBackend) -> None:
    want = {"CPU": 0.5, "memory": 64 << 20}
    assert runtime.get(assigned.options(num_cpus=0.5, memory=64 << 20).remote()) == want
    assert runtime.get(assigned.remote()) == {"CPU": 1.0}  # the defaults, not the last options
    actor = Counter.options(num_cpus=0.5, memory=64 << 20).remote()
    assert runtime.get(actor.assigned.remote()) == want


def test_scheduling_hints_become_ray_strategies(ray_rt: RayBackend) -> None:
    (node,) = [n["node_id"] for n in runtime.nodes()]
    for hint in ("SPREAD", "DEFAULT", NodeAffinity(node), NodeAffinity("ab" * 28, soft=True)):
        assert runtime.get(node_and_group.options(scheduling=hint).remote()) == (node, None)
    with pytest.raises(runtime.UnschedulableError, match="NodeAffinity"):
        runtime.get(node_and_group.options(scheduling=NodeAffinity("ab" * 28)).remote())

    pg = ray.util.placement_group([{"CPU": 1}])
    ray.get(pg.ready(), timeout=30)
    try:
        in_group = node_and_group.options(scheduling=PlacementGroupSlot(pg, 0))
        assert runtime.get(in_group.remote()) == (node, pg.id.hex())
    finally:
        ray.util.remove_placement_group(pg)


def test_requests_no_node_can_fit_fail_at_once(ray_rt: RayBackend) -> None:
    cpus = runtime.cluster_resources()["CPU"]
    with pytest.raises(runtime.UnschedulableError, match="num_cpus"):
        Counter.options(num_cpus=cpus + 1).remote()
    with pytest.raises(runtime.UnschedulableError, match="memory"):
        sleep_then.options(memory=1 << 50).remote(0)


def test_on_an_autoscaling_cluster_such_requests_are_left_to_ray(ray_instance: None) -> None:
    with runtime.init("ray", autoscaling=True):
        ref = sleep_then.options(num_cpus=runtime.cluster_resources()["CPU"] + 1).remote(0)
        assert runtime.wait([ref], timeout=0.5) == ([], [ref])  # waiting for a node to appear
        runtime.cancel(ref)
        with pytest.raises(runtime.TaskCancelledError):
            runtime.get(ref, timeout=30)


def test_cancel_stops_a_running_task_even_without_force(ray_rt: RayBackend) -> None:
    ref = sleep_then.remote(60)
    time.sleep(1.0)  # running by now
    start = time.monotonic()
    runtime.cancel(ref)
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(ref, timeout=30)
    assert time.monotonic() - start < 10  # Ray's graceful cancel would sleep on for a minute


def test_cancelling_an_actor_call_lets_it_finish_and_later_calls_run(ray_rt: RayBackend) -> None:
    c = Counter.remote()
    assert runtime.get(c.inc.remote()) == 1
    running, sent = c.slow.remote(1.0), c.inc.remote()
    runtime.cancel(sent)
    assert runtime.get([running, sent], timeout=30) == ["done", 2]
    assert runtime.get(c.inc.remote(), timeout=10) == 3  # Ray's own cancel stalls this for 30 s


def test_wait_for_zero_returns_at_once(ray_rt: RayBackend) -> None:
    done, slow = runtime.put(1), sleep_then.remote(30)
    assert runtime.wait([slow, done], num_returns=0) == ([done], [slow])
    runtime.cancel(slow)


# -- arguments, actors and the runtime inside workers ---------------------------------------------
def test_refs_in_nested_containers_reach_actors_as_values(ray_rt: RayBackend) -> None:
    a, b = runtime.put("A"), sleep_then.remote(0.2, "B")
    echo = Echo.remote({"deep": [(a,)]})
    assert runtime.get(echo.both.remote([{"k": b}])) == ({"deep": [("A",)]}, [{"k": "B"}])


def test_refs_inside_other_values_stay_refs(ray_rt: RayBackend) -> None:
    inner = runtime.put(1)
    Pair = namedtuple("Pair", "ref other")
    seen = runtime.get(describe.remote(runtime.put([inner]), Pair(inner, 2)))
    # The put value arrives as it was stored, and a namedtuple is not rebuilt: both keep refs.
    assert seen == repr((([inner], Pair(inner, 2)), {}))


def test_the_runtime_inside_a_task_is_the_same_ray(ray_rt: RayBackend) -> None:
    assert runtime.get(backend_inside.remote()) == "RayBackend"
    named = Counter.options(name="visible-from-tasks").remote(41)
    assert runtime.get(call_named.remote("visible-from-tasks")) == 42
    assert runtime.get(named.inc.remote()) == 43
    started = runtime.get(start_counter.remote(7))
    assert runtime.get(started.inc.remote()) == 8
    assert runtime.get(runtime.get(put_inside.remote("kept"))) == "kept"


def test_get_actor_returns_a_handle_with_the_class_and_its_methods(ray_rt: RayBackend) -> None:
    original = Counter.options(name="looked-up").remote()
    found = runtime.get_actor("looked-up")
    assert found == original and found.class_name == "Counter"
    assert runtime.get(found.inc.remote()) == 1
    with pytest.raises(AttributeError, match="no method"):
        found.nope.remote()


def test_handles_pickle_and_keep_working(ray_rt: RayBackend) -> None:
    c = Counter.remote()
    again = pickle.loads(pickle.dumps(c))
    assert again == c and runtime.get(again.inc.remote()) == 1


def test_calls_sent_while_an_actor_restarts_reach_the_new_process(ray_rt: RayBackend) -> None:
    c = Counter.options(max_restarts=1).remote()
    os.kill(runtime.get(c.pid.remote()), signal.SIGKILL)
    time.sleep(0.5)
    # Ray may run calls that raced with the death out of order; none is lost.
    assert sorted(runtime.get([c.inc.remote() for _ in range(5)], timeout=60)) == [1, 2, 3, 4, 5]


def test_workers_of_a_ray_it_starts_get_the_worker_settings() -> None:
    """Ray's workers run with the local workers' memory and CPU settings, unless the
    environment or the caller's runtime_env sets them."""
    lines = run_python("""
        import os, runtime
        NAMES = ("GLIBC_TUNABLES", "NUMPY_MADVISE_HUGEPAGE", "OPENBLAS_NUM_THREADS",
                 "ARROW_DEFAULT_MEMORY_POOL", "OTHER", "NPY_DISABLE_CPU_FEATURES")
        @runtime.remote
        def settings():
            import pyarrow as pa
            return [os.environ.get(n) for n in NAMES] + [pa.default_memory_pool().backend_name]
        with runtime.init("ray", num_cpus=1,
                          runtime_env={"env_vars": {"OTHER": "x", "OPENBLAS_NUM_THREADS": "3"}}):
            # the driver's own environment is left as it was
            result(*runtime.get(settings.remote()), os.environ.get("GLIBC_TUNABLES", "unset"))
    """, NUMPY_MADVISE_HUGEPAGE="1")
    from runtime.worker_settings import WORKER_MEMORY_ENV, cpu_settings
    # this machine's (Zen 4: set), unless the environment the test runs in sets its own
    cpu = os.environ.get("NPY_DISABLE_CPU_FEATURES",
                         cpu_settings().get("NPY_DISABLE_CPU_FEATURES"))
    assert lines == [" ".join([WORKER_MEMORY_ENV["GLIBC_TUNABLES"], "1", "3", "system", "x",
                               str(cpu), "system", "unset"])]
