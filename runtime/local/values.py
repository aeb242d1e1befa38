"""Encoding of results, errors and task arguments, shared by the driver and the workers.

A value's *location* is ``("inline", frame_bytes)`` for small values, which travel in messages,
or ``("shm", size)`` for values in the shared-memory store under their object id.
"""

from __future__ import annotations

import traceback
from typing import Any

from runtime.errors import RemoteTraceback, TaskError
from runtime.local import serialization
from runtime.local.store import INLINE_MAX, ObjectStore
from runtime.refs import ObjectRef

Location = tuple  # ("inline", bytes) | ("shm", int)


def encode_value(value: Any, store: ObjectStore, object_id: str) -> tuple[Location, list[str]]:
    frame = serialization.dumps(value)
    if frame.size <= INLINE_MAX:
        return ("inline", frame.to_bytes()), frame.contained
    return ("shm", store.write(object_id, frame)), frame.contained


def decode_value(loc: Location, store: ObjectStore, object_id: str) -> Any:
    if loc[0] == "inline":
        return serialization.loads(loc[1])
    return store.read(object_id)


def decode_outcomes(ids: list[str], outcomes: list[tuple], store: ObjectStore) -> list[Any]:
    """The values of done objects, raising the first one's error if it failed."""
    out = []
    for oid, outcome in zip(ids, outcomes, strict=True):
        if outcome[0] == "error":
            raise decode_error(outcome[1], outcome[2])
        out.append(decode_value(outcome, store, oid))
    return out


def encode_error(exc: BaseException, tb: str | None = None) -> tuple[bytes, str]:
    """A picklable form of an exception and its formatted traceback."""
    if tb is None:
        tb = "".join(traceback.format_exception(exc))
    exc = exc.with_traceback(None)
    cause = exc.__cause__
    try:
        exc.__cause__ = None  # the cause may not pickle; its text is in tb
        blob, _ = serialization.dumps_small(exc)
        serialization.loads_small(blob)  # must also load on the other side
    except Exception:
        blob, _ = serialization.dumps_small(TaskError(f"{type(exc).__name__}: {exc}"))
    finally:
        exc.__cause__ = cause
    return blob, tb


def decode_error(blob: bytes, tb: str) -> BaseException:
    """A fresh exception instance (so each ``get`` raises its own) with the remote traceback."""
    try:
        exc = serialization.loads_small(blob)
    except Exception as e:  # its class may not be importable here
        exc = TaskError(f"a remote task failed and its error could not be loaded here: {e}")
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def dump_args(args: tuple, kwargs: dict) -> tuple[bytes, list[str]]:
    return serialization.dumps_small((args, kwargs))


def resolve_args(args_blob: bytes, values: dict[str, Any]) -> tuple[tuple, dict]:
    """Unpickle (args, kwargs), replacing refs (also inside lists, tuples and dicts) by values."""
    args, kwargs = serialization.loads_small(args_blob)

    def sub(v: Any) -> Any:
        if isinstance(v, ObjectRef):
            return values[v.id]
        if type(v) is list:
            return [sub(x) for x in v]
        if type(v) is tuple:
            return tuple(sub(x) for x in v)
        if type(v) is dict:
            return {k: sub(x) for k, x in v.items()}
        return v

    if not values:
        return args, kwargs
    return tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}
