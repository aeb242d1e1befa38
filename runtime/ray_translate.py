"""How the runtime's options, scheduling hints and errors map onto Ray's (for ``ray_backend``)."""

from __future__ import annotations

import re
from typing import Any

import ray.exceptions as rex
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from runtime import errors
from runtime.scheduling import NodeAffinity, PlacementGroupSlot


def options_key(function_id: str, options: dict[str, Any]) -> Any:
    """A dict key for a function with these options, or None if they cannot be hashed."""
    key = (function_id, *((k, tuple(v) if isinstance(v, list) else v)
                          for k, v in sorted(options.items())))
    try:
        hash(key)
    except TypeError:  # e.g. a placement group in the scheduling hint
        return None
    return key


def retry_exceptions(value: bool | list | tuple) -> bool | list[type[BaseException]]:
    return value if isinstance(value, bool) else list(value)


def placement(options: dict[str, Any]) -> dict[str, Any]:
    """Ray's options for the resources and the placement of a task or an actor."""
    placement = {
        "num_cpus": options["num_cpus"], "scheduling_strategy": strategy(options["scheduling"])
    }
    if options["memory"]:
        placement["memory"] = options["memory"]
    return placement


def strategy(hint: Any) -> Any:
    if hint is None:
        return "DEFAULT"
    if isinstance(hint, str):
        return hint.upper()
    if isinstance(hint, NodeAffinity):
        return NodeAffinitySchedulingStrategy(node_id=hint.node_id, soft=hint.soft)
    if isinstance(hint, PlacementGroupSlot):
        return PlacementGroupSchedulingStrategy(
            placement_group=hint.placement_group, placement_group_bundle_index=hint.bundle_index
        )
    raise TypeError(f"unsupported scheduling hint {hint!r}")


def with_cpu_and_memory(resources: dict[str, float]) -> dict[str, float]:
    return {"CPU": 0.0, "memory": 0.0, **resources}


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

# Checked in order; the first Ray error class that matches decides the runtime's error class.
_SYSTEM_ERRORS: tuple[tuple[type[BaseException], type[errors.RuntimeBaseError]], ...] = (
    (rex.TaskCancelledError, errors.TaskCancelledError),
    (rex.GetTimeoutError, errors.GetTimeoutError),
    (rex.RayActorError, errors.ActorDiedError),
    (rex.TaskUnschedulableError, errors.UnschedulableError),
    (rex.ActorUnschedulableError, errors.UnschedulableError),
    (rex.WorkerCrashedError, errors.WorkerCrashedError),
    (rex.NodeDiedError, errors.WorkerCrashedError),
    (rex.OutOfMemoryError, errors.WorkerCrashedError),
    (rex.ObjectStoreFullError, errors.ObjectStoreFullError),
    (rex.ObjectLostError, errors.ObjectLostError),
    (rex.UnserializableException, errors.TaskError),  # the task's exception did not unpickle
)


def translate(error: rex.RayError) -> BaseException:
    """The exception a runtime caller sees for a Ray error."""
    message = _ANSI_ESCAPE.sub("", str(error))
    if isinstance(error, rex.RayTaskError):
        cause = error.cause
        if isinstance(cause, rex.RayError):  # a Ray error raised inside the task
            return translate(cause)
        if not isinstance(cause, BaseException):
            return errors.TaskError(message)
        cause.__cause__ = errors.RemoteTraceback(message)
        return cause
    for ray_class, runtime_class in _SYSTEM_ERRORS:
        if isinstance(error, ray_class):
            return runtime_class(message)
    return errors.RuntimeBaseError(f"{type(error).__name__}: {message}")
