"""A task-and-actor runtime with an embedded multi-process backend and a Ray backend.

    import runtime

    @runtime.remote
    def square(x):
        return x * x

    with runtime.init():                      # or init(backend="ray")
        print(runtime.get([square.remote(i) for i in range(4)]))
"""

from runtime.api import (
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    shutdown,
    wait,
)
from runtime.errors import (
    ActorDiedError,
    GetTimeoutError,
    NotInitializedError,
    ObjectLostError,
    ObjectStoreFullError,
    RemoteTraceback,
    RuntimeBaseError,
    TaskCancelledError,
    TaskError,
    TaskExitedError,
    UnschedulableError,
    WorkerCrashedError,
)
from runtime.refs import ObjectRef
from runtime.remote import ActorClass, ActorHandle, RemoteFunction, remote
from runtime.scheduling import NodeAffinity, PlacementGroupSlot
from runtime.worker_settings import release_free_memory

__all__ = [
    "ActorClass",
    "ActorDiedError",
    "ActorHandle",
    "GetTimeoutError",
    "NodeAffinity",
    "NotInitializedError",
    "ObjectLostError",
    "ObjectRef",
    "ObjectStoreFullError",
    "PlacementGroupSlot",
    "RemoteFunction",
    "RemoteTraceback",
    "RuntimeBaseError",
    "RuntimeContext",
    "TaskCancelledError",
    "TaskError",
    "TaskExitedError",
    "UnschedulableError",
    "WorkerCrashedError",
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "kill",
    "nodes",
    "put",
    "release_free_memory",
    "remote",
    "shutdown",
    "wait",
]
