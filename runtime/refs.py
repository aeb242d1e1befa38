"""ObjectRef: a future naming an object that lives in a backend's object store."""

from __future__ import annotations

from typing import Any


class ObjectRef:
    """A reference to a (possibly not yet computed) object.

    Backends subclass it; the public API only needs ``id`` (a hex string, unique per object),
    equality and hashing by id. Pass it to ``runtime.get`` for the value, or as an argument to
    another task or actor call, where it arrives as the value.
    """

    __slots__ = ("__weakref__", "id")

    def __init__(self, object_id: str) -> None:
        self.id = object_id

    def __repr__(self) -> str:
        return f"ObjectRef({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> Any:  # pragma: no cover - backends override
        raise TypeError(f"{type(self).__name__} cannot be pickled by this backend")
