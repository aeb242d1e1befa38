"""The Ray backend: the runtime API on a local Ray instance or a Ray cluster.

    caller (driver or a task)                        Ray worker process
    -------------------------                        ------------------
    f.remote(ref, [ref2], {"k": (ref3,)})
      every RayObjectRef in the arguments  ------->  Ray resolves the top-level refs itself;
      becomes the bare ray.ObjectRef                 entry() attaches the runtime API to this
                                                     Ray, gets the refs nested in lists, tuples
                                                     and dicts, then calls f
    runtime.get(ref)  <-------- value or RayTaskError (f raised)
      RayTaskError -> f's own exception, __cause__ = RemoteTraceback(remote traceback)
      Ray's own errors -> runtime.errors (WorkerCrashedError, ActorDiedError, ...)

    Cls.remote()  -------------------------------->  Shell: a Ray actor holding a Cls instance,
                                                     one forwarder per method that resolves
                                                     nested refs as entry() does

The backend holds the Ray handle of every actor it creates until ``kill`` or ``shutdown``: Ray
destroys an actor, named or not, once its last handle is dropped, while the runtime's actors live
until they are killed.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import ray
import ray.exceptions as rex
from ray.util.client.common import ClientActorHandle

from runtime import api, errors
from runtime.backend import Backend
from runtime.ray_translate import (
    options_key,
    placement,
    retry_exceptions,
    translate,
    with_cpu_and_memory,
)
from runtime.refs import ObjectRef
from runtime.remote import ActorClass, ActorHandle, RemoteFunction
from runtime.scheduling import NodeAffinity, PlacementGroupSlot
from runtime.worker_settings import WORKER_MEMORY_ENV, worker_settings


class RayObjectRef(ObjectRef):
    """An ObjectRef naming a Ray object.

    It pickles as the Ray ref it wraps, so Ray's reference counting follows it into tasks, actors
    and task results.
    """

    __slots__ = ("actor_call", "ray_ref")

    def __init__(self, ray_ref: ray.ObjectRef, actor_call: bool = False) -> None:
        super().__init__(ray_ref.hex())
        self.ray_ref = ray_ref
        self.actor_call = actor_call  # cancel() leaves actor calls alone

    def __reduce__(self) -> Any:
        return (RayObjectRef, (self.ray_ref, self.actor_call))


_environment_lock = threading.Lock()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with those of ``values`` it lacks set, for processes started meanwhile;
    removed after. One ``ray.init`` at a time changes it; other threads of the program still
    see the settings meanwhile (start the backend before threads that start processes)."""
    with _environment_lock:
        added = {k: v for k, v in values.items() if k not in os.environ}
        os.environ.update(added)
        try:
            yield
        finally:
            for k in added:
                os.environ.pop(k, None)


CONNECT_SECONDS = 10.0  # a cluster's address that accepts no TCP connection in this long fails


def check_reachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """Fail at once, naming ``address``, when nothing accepts a connection where it points
    (``ray://host:port``, or a GCS's ``host:port``; ``auto`` and other forms are left to Ray).
    Ray itself retries an unreachable client address for 30 s and a GCS address for minutes."""
    rest = address.removeprefix("ray://")
    if "://" in rest:
        return
    try:
        parts = urlsplit("//" + rest)
        host, port = parts.hostname, parts.port
    except ValueError:
        return
    if not host or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConnectionError(f"cannot reach a Ray cluster at {address!r}: {reason}") from None


class RayBackend(Backend):
    """Runs tasks and actors on Ray.

    ``address=None`` uses the Ray this process is already connected to (a program that called
    ``ray.init`` itself, or a Ray worker), else starts a local instance with ``num_cpus`` and
    ``memory`` (bytes). ``"auto"`` or ``"ray://host:port"`` joins a running cluster, which has
    its own resources. Only a Ray this backend started is shut down by :meth:`shutdown`; on a
    Ray it joined, it kills just the actors it created. Other keyword options go to ``ray.init``.

    A task or actor that no live node can ever fit is rejected at ``.remote()`` with
    ``UnschedulableError``, where Ray would wait for a node forever. On a cluster whose autoscaler
    adds nodes on demand pass ``autoscaling=True`` to leave such requests to the autoscaler.
    """

    name = "ray"

    def __init__(
        self,
        num_cpus: float | None = None,
        memory: int | None = None,
        address: str | None = None,
        *,
        autoscaling: bool = False,
        preload: Sequence[str] = (),  # (Ray starts and reuses its own worker processes)
        **ray_init_options: Any,
    ) -> None:
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if address is None:
                ray_init_options = {
                    "num_cpus": num_cpus, "_memory": memory, "include_dashboard": False,
                    **ray_init_options,
                }
            elif num_cpus is not None or memory is not None:
                raise ValueError(
                    f"num_cpus and memory size a new local Ray instance; the cluster at "
                    f"address={address!r} has its own resources"
                )
            # workers get the local backend's settings (worker_settings), unless this
            # environment or the caller's runtime_env says otherwise; a cluster's workers only
            # its memory settings (their CPU is not this machine's)
            runtime_env = dict(ray_init_options.pop("runtime_env", None) or {})
            defaults = worker_settings() if address is None else WORKER_MEMORY_ENV
            settings = {k: os.environ.get(k, v) for k, v in defaults.items()}
            if address is None:
                # a new local instance: its processes inherit this environment, so its workers
                # (started with it, not per job) have the settings when the first task comes;
                # so do its own daemons (raylet, GCS), which allocate little
                with _environment(settings):
                    # "local" always starts a new instance: a bare ray.init() would join
                    # whatever cluster another program left running on this machine
                    ray.init(address="local", runtime_env=runtime_env or None,
                             **ray_init_options)
            else:
                runtime_env["env_vars"] = {**settings, **(runtime_env.get("env_vars") or {})}
                check_reachable(address)
                ray.init(address=address, runtime_env=runtime_env, **ray_init_options)
        self._autoscaling = autoscaling
        self._remote_functions: dict[str, Any] = {}  # function_id -> Ray remote function
        self._task_variants: dict[Any, Any] = {}  # (function_id, options) -> it with options
        self._actor_classes: dict[str, Any] = {}  # class_id -> Ray actor class
        self._actors: dict[str, Any] = {}  # actor_id -> Ray handle, kept alive until killed
        self._node_sizes: list[tuple[float, float]] = []  # (CPU, memory) of live nodes, cached

    # -- tasks and actors -------------------------------------------------------------------------
    def submit_task(
        self, fn: RemoteFunction, args: tuple, kwargs: dict, options: dict[str, Any]
    ) -> ObjectRef:
        self._check_fits(f"task {fn.__qualname__!r}", options)
        key = options_key(fn.function_id, options)
        remote_fn = self._task_variants.get(key)
        if remote_fn is None:
            remote_fn = self._remote_functions.get(fn.function_id)
            if remote_fn is None:  # Ray ships the function to the cluster once per object
                remote_fn = self._remote_functions[fn.function_id] = ray.remote(_task_entry(fn))
            remote_fn = remote_fn.options(
                **placement(options), max_retries=options["max_retries"],
                retry_exceptions=retry_exceptions(options["retry_exceptions"]),
            )
            if key is not None:  # Ray's .options() costs a class definition per call
                if len(self._task_variants) >= 1024:  # e.g. a memory estimate per task
                    self._task_variants.clear()
                self._task_variants[key] = remote_fn
        args, kwargs = _ray_args(args, kwargs)
        return RayObjectRef(remote_fn.remote(*args, **kwargs))

    def create_actor(
        self, cls: ActorClass, args: tuple, kwargs: dict, options: dict[str, Any]
    ) -> ActorHandle:
        self._check_fits(f"actor {cls.__qualname__!r}", options)
        methods = cls.method_names()
        ray_cls = self._actor_classes.get(cls.class_id)
        if ray_cls is None:
            ray_cls = ray.remote(_actor_shell(cls, methods))
            self._actor_classes[cls.class_id] = ray_cls
        restarts = options["max_restarts"]
        ray_options: dict[str, Any] = {
            **placement(options),
            "max_restarts": restarts,
            # Without task retries Ray fails every call sent while the actor is down, even
            # those submitted during its restart. With them the calls reach the restarted
            # process; the price is that the call it died running is run again, and calls that
            # raced with its death may run out of order.
            "max_task_retries": restarts,
            "max_concurrency": options["max_concurrency"],
        }
        if options["name"] is not None:
            ray_options["name"] = options["name"]
        args, kwargs = _ray_args(args, kwargs)
        try:
            ray_handle = ray_cls.options(**ray_options).remote(*args, **kwargs)
        except rex.ActorAlreadyExistsError:
            raise ValueError(f"an actor named {options['name']!r} already exists") from None
        handle = ActorHandle(ray_handle._actor_id.hex(), cls.__name__, methods, ray_handle)
        self._actors[handle.actor_id] = ray_handle
        return handle

    def submit_actor_task(
        self, handle: ActorHandle, method: str, args: tuple, kwargs: dict
    ) -> ObjectRef:
        ray_method = getattr(_ray_handle(handle), method)
        args, kwargs = _ray_args(args, kwargs)
        return RayObjectRef(ray_method.remote(*args, **kwargs), actor_call=True)

    def get_actor(self, name: str) -> ActorHandle:
        try:
            ray_handle = ray.get_actor(name)
        except ValueError:
            raise ValueError(f"there is no live actor named {name!r}") from None
        # The shell class has the user's class name and one method per user method; a Ray
        # client's handle does not know the class name.
        descriptor = getattr(ray_handle, "_ray_actor_creation_function_descriptor", None)
        class_name = descriptor.class_name if descriptor is not None else "actor"
        methods = [m for m in dir(ray_handle) if not m.startswith("__")]
        return ActorHandle(ray_handle._actor_id.hex(), class_name, methods, ray_handle)

    def kill(self, handle: ActorHandle, *, no_restart: bool = True) -> None:
        ray.kill(_ray_handle(handle), no_restart=no_restart)
        if no_restart:
            self._actors.pop(handle.actor_id, None)

    # -- objects ----------------------------------------------------------------------------------
    def put(self, value: Any) -> ObjectRef:
        try:
            return RayObjectRef(ray.put(value))
        except rex.RayError as e:
            error = translate(e)
        raise error

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        return _get([_ray_ref(r) for r in refs], timeout)

    def wait(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        if not refs:
            return [], []
        ray_refs = [_ray_ref(r) for r in refs]
        if num_returns == 0:  # Ray refuses 0: report what is ready right now
            ready, _ = ray.wait(ray_refs, num_returns=len(ray_refs), timeout=0)
        else:
            ready, _ = ray.wait(ray_refs, num_returns=num_returns, timeout=timeout)
        done = set(ready)
        return (
            [r for r, rr in zip(refs, ray_refs, strict=True) if rr in done],
            [r for r, rr in zip(refs, ray_refs, strict=True) if rr not in done],
        )

    def cancel(self, ref: ObjectRef, *, force: bool = False) -> None:
        """Cancel the task behind ``ref``; ``force`` makes no difference on Ray.

        Ray's graceful cancel raises KeyboardInterrupt between bytecodes, so a task blocked in C
        (sleep, I/O) runs on; to stop a running task as the runtime promises, tasks are always
        force-cancelled (their worker process is killed, and they are not retried).

        An actor call is left to run and return its result, as the local backend does with a
        call it has already sent to the actor: Ray sends calls at once. Ray's own cancel of an
        actor call (Ray 2.60) either runs the call all the same, or, when the call was not sent
        yet, leaves a gap in the caller's call sequence that stalls the caller's later calls to
        that actor for 30 s and then fails them.
        """
        if not isinstance(ref, RayObjectRef):
            raise TypeError(f"expected an ObjectRef of the ray backend, got {ref!r}")
        if not ref.actor_call:
            ray.cancel(ref.ray_ref, force=True)

    # -- cluster ----------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        return [
            {"node_id": n["NodeID"], "alive": True, "address": n["NodeManagerAddress"],
             "resources": with_cpu_and_memory(n["Resources"])}
            for n in ray.nodes() if n["Alive"]
        ]

    def cluster_resources(self) -> dict[str, float]:
        return with_cpu_and_memory(ray.cluster_resources())

    def available_resources(self) -> dict[str, float]:
        return with_cpu_and_memory(ray.available_resources())

    def shutdown(self) -> None:
        actors, self._actors = self._actors, {}
        if self._owns_ray:
            ray.shutdown()
        elif ray.is_initialized():
            for ray_handle in actors.values():
                ray.kill(ray_handle)

    # -- helpers ----------------------------------------------------------------------------------
    def _check_fits(self, what: str, options: dict[str, Any]) -> None:
        """Reject a request that no live node can ever fit (Ray would wait for one forever).

        Node sizes are cached and refreshed only when a request fits no cached node, so the
        common case costs no round trip to Ray's control store.
        """
        scheduling = options["scheduling"]
        if self._autoscaling or isinstance(scheduling, PlacementGroupSlot):
            return  # placement groups: Ray itself checks the request against the bundles
        if isinstance(scheduling, NodeAffinity) and not scheduling.soft:
            return  # Ray fails it at once (TaskUnschedulableError) if that node cannot fit it
        cpus, memory = options["num_cpus"], options["memory"]
        for refresh in (False, True):
            if refresh:
                self._node_sizes = [
                    (r.get("CPU", 0.0), r.get("memory", 0.0))
                    for r in (n["resources"] for n in self.nodes())
                ]
            if any(cpus <= c and memory <= m for c, m in self._node_sizes):
                return
        largest = ", ".join(f"CPU={c:g} memory={m:.0f}" for c, m in self._node_sizes) or "none"
        raise errors.UnschedulableError(
            f"{what} asks for num_cpus={cpus:g}, memory={memory} bytes, more than any node of "
            f"the Ray cluster has (live nodes: {largest}); it could never run"
        )


# -- worker side: what runs inside Ray's processes ------------------------------------------------
_attach_lock = threading.Lock()


def _attach_worker() -> None:
    """Make the runtime API usable inside a Ray worker: nested tasks, get, put, actors."""
    if not api.is_initialized():
        with _attach_lock:
            if not api.is_initialized():
                api._set_backend(RayBackend())


def _task_entry(fn: RemoteFunction) -> Callable[..., Any]:
    """The function Ray runs for a task: the user's, after resolving nested refs.

    It holds the RemoteFunction, not the bare function, so that the wrapper's own pickling
    decides how the function travels (by reference when it is importable).
    """

    def entry(*args: Any, **kwargs: Any) -> Any:
        _attach_worker()
        args, kwargs = _resolve_nested(args, kwargs)
        return fn.function(*args, **kwargs)

    # Ray names the task after the function: ray::<name> in errors, logs and the dashboard.
    entry.__name__ = fn.__name__
    entry.__qualname__ = fn.__qualname__
    return entry


def _actor_shell(cls: ActorClass, methods: list[str]) -> type:
    """A Ray actor class that holds an instance of ``cls`` and forwards each of its methods."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _attach_worker()
        args, kwargs = _resolve_nested(args, kwargs)
        self._runtime_instance = cls.cls(*args, **kwargs)

    def forwarder(name: str) -> Callable[..., Any]:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            args, kwargs = _resolve_nested(args, kwargs)
            return getattr(self._runtime_instance, name)(*args, **kwargs)

        method.__name__ = method.__qualname__ = name
        return method

    namespace: dict[str, Any] = {"__init__": __init__}
    namespace.update((name, forwarder(name)) for name in methods)
    return type(cls.__name__, (), namespace)


def _resolve_nested(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Replace the bare Ray refs the caller left inside list/tuple/dict arguments by values."""
    nested: list[ray.ObjectRef] = []

    def note(ref: ray.ObjectRef) -> ray.ObjectRef:
        nested.append(ref)
        return ref

    for value in (*args, *kwargs.values()):
        _map_refs(value, ray.ObjectRef, note)
    if not nested:
        return args, kwargs
    values = dict(zip(nested, _get(nested, None), strict=True)).__getitem__
    return (
        tuple(_map_refs(a, ray.ObjectRef, values) for a in args),
        {k: _map_refs(v, ray.ObjectRef, values) for k, v in kwargs.items()},
    )


def _map_refs(value: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
    """``value`` with ``fn`` applied to each ``kind`` in it, also inside (nested) lists, tuples
    and dicts; ``value`` itself when nothing changed.

    Exact types only, as the local backend does: rebuilding a subclass (a namedtuple, a
    defaultdict) could change what it is.
    """
    if isinstance(value, kind):
        return fn(value)
    t = type(value)
    if t is list or t is tuple:
        items = [_map_refs(v, kind, fn) for v in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return t(items)
    if t is dict:
        mapped = {k: _map_refs(v, kind, fn) for k, v in value.items()}
        if all(mapped[k] is v for k, v in value.items()):
            return value
        return mapped
    return value


# -- mapping to and from Ray ----------------------------------------------------------------------
def _ray_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Arguments as Ray takes them: every RayObjectRef in them as the bare Ray ref.

    Ray resolves a top-level Ray ref before the task starts; the task's entry resolves the
    ones inside lists, tuples and dicts. A RayObjectRef that is itself inside a value (one
    resolved from a ref, or an opaque object) stays a ref, as on the local backend.
    """
    def unwrap(ref: RayObjectRef) -> ray.ObjectRef:
        return ref.ray_ref

    return (
        tuple(_map_refs(a, RayObjectRef, unwrap) for a in args),
        {k: _map_refs(v, RayObjectRef, unwrap) for k, v in kwargs.items()},
    )


def _ray_ref(ref: ObjectRef) -> ray.ObjectRef:
    if not isinstance(ref, RayObjectRef):
        raise TypeError(f"expected an ObjectRef of the ray backend, got {ref!r}")
    return ref.ray_ref


def _ray_handle(handle: ActorHandle) -> Any:
    if not isinstance(handle.backend_ref, ray.actor.ActorHandle | ClientActorHandle):
        raise TypeError(f"{handle!r} is not an actor of the ray backend")
    return handle.backend_ref


def _get(ray_refs: list[ray.ObjectRef], timeout: float | None) -> list[Any]:
    try:
        values: list[Any] = ray.get(ray_refs, timeout=timeout)
        return values
    except rex.RayError as e:
        error = translate(e)
    raise error  # outside the except block, so Ray's error is not chained as the context
