"""The one seam between the runtime API and an execution engine.

A backend turns task submissions, actor calls and object operations into work on some engine:
``runtime.local`` runs worker processes on this machine, ``runtime.ray_backend`` runs on Ray. The
public API (``runtime.api``) and the remote wrappers (``runtime.remote``) are written only against
this interface, so a program runs unchanged on either.

Options reaching a backend are already validated and complete (``runtime.options.resolve``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.refs import ObjectRef
    from runtime.remote import ActorClass, ActorHandle, RemoteFunction


class Backend(abc.ABC):
    name: str = "?"

    # -- tasks and actors -------------------------------------------------------------------------
    @abc.abstractmethod
    def submit_task(
        self, fn: RemoteFunction, args: tuple, kwargs: dict, options: dict[str, Any]
    ) -> ObjectRef: ...

    @abc.abstractmethod
    def create_actor(
        self, cls: ActorClass, args: tuple, kwargs: dict, options: dict[str, Any]
    ) -> ActorHandle: ...

    @abc.abstractmethod
    def submit_actor_task(
        self, handle: ActorHandle, method: str, args: tuple, kwargs: dict
    ) -> ObjectRef: ...

    @abc.abstractmethod
    def get_actor(self, name: str) -> ActorHandle: ...

    @abc.abstractmethod
    def kill(self, handle: ActorHandle, *, no_restart: bool = True) -> None: ...

    # -- objects ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def put(self, value: Any) -> ObjectRef: ...

    @abc.abstractmethod
    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]: ...

    @abc.abstractmethod
    def wait(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]: ...

    @abc.abstractmethod
    def cancel(self, ref: ObjectRef, *, force: bool = False) -> None: ...

    # -- cluster ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def nodes(self) -> list[dict[str, Any]]:
        """One dict per live node: ``node_id``, ``alive``, ``resources`` (``CPU``, ``memory``)."""

    @abc.abstractmethod
    def cluster_resources(self) -> dict[str, float]:
        """Total resources: at least ``CPU`` and ``memory`` (bytes)."""

    @abc.abstractmethod
    def available_resources(self) -> dict[str, float]: ...

    @abc.abstractmethod
    def shutdown(self) -> None: ...
