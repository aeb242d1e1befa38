"""The ``@remote`` decorator: remote functions, actor classes and actor handles.

These wrappers hold a callable and its validated options; every call goes to the current backend
(``runtime.api.current_backend``). ``.options(...)`` always returns a new wrapper.
"""

from __future__ import annotations

import importlib
import inspect
import uuid
from collections.abc import Callable
from typing import Any

from runtime import options as opts
from runtime.refs import ObjectRef


def _backend() -> Any:
    from runtime.api import current_backend  # late: api imports this module

    return current_backend()


class RemoteFunction:
    """A function that runs as a task: ``f.remote(*args)`` returns an ``ObjectRef`` at once."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any],
                 function_id: str | None = None) -> None:
        self._fn = fn
        self._options = opts.validate("task", options)
        # The id names the function (not its options) so backends can cache its code per worker.
        self._function_id = function_id or uuid.uuid4().hex
        self.__name__ = getattr(fn, "__name__", "task")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = fn.__doc__
        self.__module__ = getattr(fn, "__module__", __name__)

    @property
    def function(self) -> Callable[..., Any]:
        return self._fn

    @property
    def function_id(self) -> str:
        return self._function_id

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self.__qualname__!r} cannot be called directly; "
            f"use {self.__name__}.remote(...) to run it as a task"
        )

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef:
        return _backend().submit_task(self, args, kwargs, opts.resolve("task", self._options))

    def options(self, **options: Any) -> RemoteFunction:
        merged = {**self._options, **opts.validate("task", options)}
        return RemoteFunction(self._fn, merged, self._function_id)

    def __reduce__(self) -> Any:
        return _reduce_wrapper(self, self._fn, self._options, self._function_id)


class ActorClass:
    """A class whose instances are actors: ``Cls.remote(*args)`` returns an ``ActorHandle``."""

    def __init__(self, cls: type, options: dict[str, Any], class_id: str | None = None) -> None:
        self._cls = cls
        self._options = opts.validate("actor", options)
        self._class_id = class_id or uuid.uuid4().hex
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    @property
    def cls(self) -> type:
        return self._cls

    @property
    def class_id(self) -> str:
        return self._class_id

    def method_names(self) -> list[str]:
        return [
            n for n, m in inspect.getmembers(self._cls, callable)
            if not (n.startswith("__") and n.endswith("__"))
        ]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor class {self.__qualname__!r} cannot be instantiated directly; "
            f"use {self.__name__}.remote(...) to start an actor"
        )

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return _backend().create_actor(self, args, kwargs, opts.resolve("actor", self._options))

    def options(self, **options: Any) -> ActorClass:
        merged = {**self._options, **opts.validate("actor", options)}
        return ActorClass(self._cls, merged, self._class_id)

    def __reduce__(self) -> Any:
        return _reduce_wrapper(self, self._cls, self._options, self._class_id)


class ActorMethod:
    __slots__ = ("_handle", "_name")

    def __init__(self, handle: ActorHandle, name: str) -> None:
        self._handle = handle
        self._name = name

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef:
        return _backend().submit_actor_task(self._handle, self._name, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor method {self._handle.class_name}.{self._name} cannot be called directly; "
            f"use .{self._name}.remote(...)"
        )


class ActorHandle:
    """A picklable handle to a running actor; ``handle.method.remote(...)`` calls it.

    ``backend_ref`` is whatever the backend needs to reach the actor (an id, a Ray handle).
    """

    def __init__(self, actor_id: str, class_name: str, method_names: list[str],
                 backend_ref: Any = None) -> None:
        self.actor_id = actor_id
        self.class_name = class_name
        self._method_names = frozenset(method_names)
        self.backend_ref = backend_ref

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_") and name not in self.__dict__.get("_method_names", ()):
            raise AttributeError(name)
        if name not in self._method_names:
            raise AttributeError(f"actor {self.class_name} has no method {name!r}")
        return ActorMethod(self, name)

    def __repr__(self) -> str:
        return f"ActorHandle({self.class_name}, {self.actor_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other.actor_id == self.actor_id

    def __hash__(self) -> int:
        return hash(self.actor_id)

    def __reduce__(self) -> Any:
        return (ActorHandle, (self.actor_id, self.class_name, sorted(self._method_names),
                              self.backend_ref))


def _reduce_wrapper(wrapper: Any, target: Any, options: dict[str, Any], wrapper_id: str) -> Any:
    """Pickle a module-level wrapper by reference (its module is imported where it is loaded,
    so tracebacks show real source lines); anything else (``__main__``, closures) by value."""
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if module and module != "__main__" and "<locals>" not in qualname:
        try:
            found = _lookup(module, qualname)
        except (ImportError, AttributeError):
            found = None
        if isinstance(found, type(wrapper)) and (
            getattr(found, "_fn", None) is target or getattr(found, "_cls", None) is target
        ):
            return (_load_wrapper, (module, qualname, options, wrapper_id))
    return (type(wrapper), (target, options, wrapper_id))


def _lookup(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _load_wrapper(module: str, qualname: str, options: dict[str, Any], wrapper_id: str) -> Any:
    found = _lookup(module, qualname)
    target = found._fn if isinstance(found, RemoteFunction) else found._cls
    return type(found)(target, options, wrapper_id)


def remote(*args: Any, **options: Any) -> Any:
    """Decorate a function (a task) or a class (an actor), with or without options.

    ``@remote``, ``@remote(num_cpus=2, memory=1 << 30)``; options are validated here.
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError("use @remote or @remote(option=value, ...) with keyword options only")

    def decorate(obj: Any) -> Any:
        return _make(obj, options)

    return decorate


def _make(obj: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError(f"@remote applies to a function or a class, not {obj!r}")
