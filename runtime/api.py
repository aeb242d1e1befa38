"""The public runtime API: init/shutdown, get/put/wait/cancel, named actors.

Backends are found in a registry of lazily imported dotted paths (like fsspec's), so selecting
``ray`` without Ray installed is a clear error naming the extra to install. The backend can be
chosen in code, or with the ``COMPACTOR_BACKEND`` environment variable (and ``COMPACTOR_ADDRESS``
for Ray's address), so the CLI and jobs run the same program on either.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from typing import Any, overload

from runtime.backend import Backend
from runtime.errors import NotInitializedError
from runtime.refs import ObjectRef
from runtime.remote import ActorHandle

BACKENDS: dict[str, tuple[str, str]] = {
    # name: (dotted path "module:Class", install hint)
    "local": ("runtime.local.driver:LocalBackend", "it is part of compactor itself"),
    "ray": ("runtime.ray_backend:RayBackend", "pip install 'compactor[ray]'"),
}

ENV_BACKEND = "COMPACTOR_BACKEND"
ENV_ADDRESS = "COMPACTOR_ADDRESS"
ADDRESS_BACKENDS = ("ray",)  # the backends that join a cluster at an address (ENV_ADDRESS's)

_lock = threading.Lock()
_backend: Backend | None = None


def _load_backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ValueError(f"unknown runtime backend {name!r}; choose one of {', '.join(BACKENDS)}")
    path, hint = BACKENDS[name]
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"the {name!r} runtime backend needs a package that is not installed "
            f"({e.name or e}); install it with: {hint}"
        ) from e
    cls: type[Backend] = getattr(module, attr)
    return cls


def backend_name(backend: str | None) -> str:
    """The backend ``init(backend)`` starts: ``backend``, else ``$COMPACTOR_BACKEND``, else
    ``"local"`` (lower case)."""
    return (backend or os.environ.get(ENV_BACKEND) or "local").lower()


def backend_address(name: str, address: str | None) -> str | None:
    """The address backend ``name`` is started with: ``address``, else ``$COMPACTOR_ADDRESS``
    for a backend that joins a cluster; ``ValueError`` for an address the backend cannot use."""
    if name not in ADDRESS_BACKENDS:
        if address is not None:
            raise ValueError(f"the {name} runtime backend takes no address (got {address!r}); "
                             f"an address is for the {' or '.join(ADDRESS_BACKENDS)} backend")
        return None
    return address if address is not None else os.environ.get(ENV_ADDRESS) or None


class RuntimeContext:
    """Returned by :func:`init`; ``with runtime.init(...):`` shuts the runtime down on exit."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __enter__(self) -> RuntimeContext:
        return self

    def __exit__(self, *exc: object) -> None:
        shutdown()


def init(
    backend: str | None = None,
    *,
    num_cpus: float | None = None,
    memory: int | None = None,
    address: str | None = None,
    preload: Sequence[str] = (),
    **backend_options: Any,
) -> RuntimeContext:
    """Start (or join) the runtime.

    backend: ``"local"`` (default; worker processes on this machine) or ``"ray"``. When None,
    ``$COMPACTOR_BACKEND`` decides, else ``"local"``.
    num_cpus / memory: the budget tasks and actors are scheduled in (default: this machine's).
    address: for Ray, ``None`` (start a local instance), ``"auto"`` or ``"ray://host:port"``;
    ``$COMPACTOR_ADDRESS`` when None. Only Ray takes one: ``$COMPACTOR_ADDRESS`` is ignored by
    the other backends (it may be set for a cluster while one program runs locally), and an
    address passed to them is a ``ValueError``.
    preload: modules the program's tasks and actors import. The local backend forks its
    workers from one process that imported them once (``runtime.local.zygote``), so a worker or
    actor started mid-job is ready in milliseconds, not after its own imports; Ray starts its
    workers itself.
    """
    global _backend
    name = backend_name(backend)
    cls = _load_backend_class(name)
    address = backend_address(name, address)
    with _lock:
        if _backend is not None:
            raise RuntimeError(
                f"the runtime is already initialized (backend {_backend.name!r}); "
                "call runtime.shutdown() first"
            )
        kwargs = dict(backend_options)
        if preload:
            kwargs["preload"] = tuple(preload)
        if address is not None:
            kwargs["address"] = address
        _backend = cls(num_cpus=num_cpus, memory=memory, **kwargs)  # type: ignore[call-arg]
        return RuntimeContext(_backend)


def shutdown() -> None:
    """Stop the runtime: workers and actors end, shared memory is released. Idempotent."""
    global _backend
    with _lock:
        backend, _backend = _backend, None
    if backend is not None:
        backend.shutdown()


def is_initialized() -> bool:
    return _backend is not None


def current_backend() -> Backend:
    if _backend is None:
        raise NotInitializedError("the runtime is not initialized; call runtime.init() first")
    return _backend


def _set_backend(backend: Backend | None) -> None:
    """Used by worker processes to install their connection to the driver as the backend."""
    global _backend
    _backend = backend


@overload
def get(refs: ObjectRef, timeout: float | None = None) -> Any: ...
@overload
def get(refs: Sequence[ObjectRef], timeout: float | None = None) -> list[Any]: ...


def get(refs: ObjectRef | Sequence[ObjectRef], timeout: float | None = None) -> Any:
    """The value of one ref, or a list of values for a list of refs.

    Blocks until ready; raises ``GetTimeoutError`` after ``timeout`` seconds, the task's own
    exception (remote traceback as ``__cause__``), or a runtime error (``WorkerCrashedError``,
    ``ActorDiedError``, ``TaskCancelledError``...).
    """
    if isinstance(refs, ObjectRef):
        return current_backend().get([refs], timeout)[0]
    refs = list(refs)
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"runtime.get() takes ObjectRefs, got {type(r).__name__}")
    return current_backend().get(refs, timeout)


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the object store once; pass the ref to many tasks without copying."""
    if isinstance(value, ObjectRef):
        raise TypeError("runtime.put() of an ObjectRef is not allowed; pass the ref itself")
    return current_backend().put(value)


def wait(
    refs: Sequence[ObjectRef], num_returns: int = 1, timeout: float | None = None
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split ``refs`` into (ready, not ready), returning once ``num_returns`` are ready or at
    ``timeout``. Both lists keep the input order."""
    refs = list(refs)
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns={num_returns} must be between 0 and len(refs)={len(refs)}")
    if len(set(refs)) != len(refs):
        raise ValueError("runtime.wait() got the same ObjectRef more than once")
    return current_backend().wait(refs, num_returns, timeout)


def cancel(ref: ObjectRef, *, force: bool = False) -> None:
    """Cancel the task behind ``ref``; ``get`` then raises ``TaskCancelledError``.

    A queued task is dropped. A running task's worker process is stopped (tasks only; a running
    actor call cannot be interrupted and finishes). Cancelled tasks are never retried.
    """
    current_backend().cancel(ref, force=force)


def get_actor(name: str) -> ActorHandle:
    """The handle of the live actor created with ``.options(name=name)``; ``ValueError`` if none."""
    return current_backend().get_actor(name)


def kill(handle: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor's process. With ``no_restart=False`` it is restarted if its budget allows."""
    current_backend().kill(handle, no_restart=no_restart)


def nodes() -> list[dict[str, Any]]:
    return current_backend().nodes()


def cluster_resources() -> dict[str, float]:
    return current_backend().cluster_resources()


def available_resources() -> dict[str, float]:
    return current_backend().available_resources()
