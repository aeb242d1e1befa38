"""The runtime API inside a worker or actor process: every call goes to the driver.

Submissions are fire-and-forget messages (the worker names the result object itself, so no round
trip is needed); ``get``/``wait`` and lookups are requests answered by the driver.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from runtime.backend import Backend
from runtime.errors import GetTimeoutError
from runtime.local import serialization, values
from runtime.local.channel import Channel
from runtime.local.refs import LocalObjectRef
from runtime.local.store import ObjectStore
from runtime.refs import ObjectRef
from runtime.remote import ActorClass, ActorHandle, RemoteFunction


def new_id() -> str:
    return uuid.uuid4().hex


class CodeCache:
    """Pickled functions and classes, made once per process and id."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def blob(self, code_id: str, obj: Any) -> bytes:
        blob = self._blobs.get(code_id)
        if blob is None:
            blob, _ = serialization.dumps_small(obj)
            self._blobs[code_id] = blob
        return blob


class WorkerBackend(Backend):
    name = "local"

    def __init__(self, channel: Channel, store: ObjectStore, worker_id: str, node_id: str) -> None:
        self.channel = channel
        self.store = store
        self.worker_id = worker_id
        self.node_id = node_id
        self.code = CodeCache()

    def submit_task(self, fn: RemoteFunction, args: tuple, kwargs: dict,
                    options: dict[str, Any]) -> ObjectRef:
        ref = LocalObjectRef(new_id())
        args_blob, arg_ids = values.dump_args(args, kwargs)
        fn_blob = self.code.blob(fn.function_id, fn)
        self.channel.send(("submit", ref.id, fn.function_id, fn_blob, fn.__qualname__,
                           args_blob, arg_ids, options))
        return ref

    def create_actor(self, cls: ActorClass, args: tuple, kwargs: dict,
                     options: dict[str, Any]) -> ActorHandle:
        actor_id = new_id()
        args_blob, arg_ids = values.dump_args(args, kwargs)
        cls_blob = self.code.blob(cls.class_id, cls)
        methods = cls.method_names()
        reply = self.channel.request(
            "create_actor",
            (actor_id, cls_blob, cls.__name__, methods, args_blob, arg_ids, options),
        )
        if reply[0] == "error":
            raise values.decode_error(reply[1], "")
        return ActorHandle(actor_id, cls.__name__, methods)

    def submit_actor_task(self, handle: ActorHandle, method: str, args: tuple,
                          kwargs: dict) -> ObjectRef:
        ref = LocalObjectRef(new_id())
        args_blob, arg_ids = values.dump_args(args, kwargs)
        self.channel.send(("call_actor", ref.id, handle.actor_id, method, args_blob, arg_ids))
        return ref

    def get_actor(self, name: str) -> ActorHandle:
        reply = self.channel.request("get_actor", name)
        if reply[0] == "error":
            raise values.decode_error(reply[1], "")
        actor_id, class_name, methods = reply[1]
        return ActorHandle(actor_id, class_name, methods)

    def kill(self, handle: ActorHandle, *, no_restart: bool = True) -> None:
        self.channel.send(("kill", handle.actor_id, no_restart))

    def put(self, value: Any) -> ObjectRef:
        ref = LocalObjectRef(new_id())
        loc, contained = values.encode_value(value, self.store, ref.id)
        self.channel.send(("put", ref.id, loc, contained))
        return ref

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        ids = [r.id for r in refs]
        try:
            locs = self.channel.request("get", ids, timeout)
        except GetTimeoutError:
            raise GetTimeoutError(
                f"runtime.get() timed out after {timeout} s waiting for {len(ids)} object(s)"
            ) from None
        return values.decode_outcomes(ids, locs, self.store)

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        ready_ids = set(self.channel.request("wait", ([r.id for r in refs], num_returns, timeout)))
        return ([r for r in refs if r.id in ready_ids], [r for r in refs if r.id not in ready_ids])

    def cancel(self, ref: ObjectRef, *, force: bool = False) -> None:
        self.channel.send(("cancel", ref.id, force))

    def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.channel.request("info", "nodes")
        return result

    def cluster_resources(self) -> dict[str, float]:
        result: dict[str, float] = self.channel.request("info", "cluster_resources")
        return result

    def available_resources(self) -> dict[str, float]:
        result: dict[str, float] = self.channel.request("info", "available_resources")
        return result

    def shutdown(self) -> None:
        raise RuntimeError("runtime.shutdown() can only be called by the driver, not in a task")
