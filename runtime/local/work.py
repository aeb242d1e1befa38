"""Records of the driver's scheduler: a unit of work (task or actor call) and an actor."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Work:
    """A task, or a call to an actor method; ``id`` is the id of its result object."""

    id: str
    name: str
    args_blob: bytes
    arg_ids: list[str]
    fn_id: str = ""  # tasks
    options: dict[str, Any] = field(default_factory=dict)
    retries_left: int = 0
    actor_id: str = ""  # actor calls
    method: str = ""
    cancelled: bool = False
    worker: Any = None  # the WorkerProc running it
    cpus: float = 0.0
    memory: int = 0


@dataclass(eq=False)
class Actor:
    id: str
    class_name: str
    methods: list[str]
    cls_blob: bytes
    args_blob: bytes
    arg_ids: list[str]
    options: dict[str, Any]
    restarts_left: int
    state: str = "pending"  # pending -> starting -> alive -> (restarting -> alive)* -> dead
    worker: Any = None
    queue: deque[Work] = field(default_factory=deque)  # calls not yet sent, in order
    inflight: dict[str, Work] = field(default_factory=dict)
    death: tuple[bytes, str] | None = None  # the error calls get once it is dead
    no_restart: bool = False

    @property
    def name(self) -> str | None:
        name: str | None = self.options.get("name")
        return name
