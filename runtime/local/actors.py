"""Actors of the local backend: each lives in its own worker process.

Calls to an actor are queued in the driver in submission order and sent to its process as their
arguments become ready; the process runs them in that order (or on ``max_concurrency`` threads).
When the process dies, the calls it was running fail with ``ActorDiedError``; if the actor may
restart, a new process runs the constructor again and the queued calls go to it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from runtime.errors import ActorDiedError, TaskCancelledError
from runtime.local import values
from runtime.local.work import Actor, Work

if TYPE_CHECKING:
    from runtime.local.driver import LocalBackend
    from runtime.local.processes import WorkerProc


class ActorManager:
    def __init__(self, backend: LocalBackend) -> None:
        self.b = backend
        self.actors: dict[str, Actor] = {}
        self.names: dict[str, str] = {}
        self.reserved: set[str] = set()

    def create(self, class_name: str, methods: list[str], cls_blob: bytes, args_blob: bytes,
               arg_ids: list[str], options: dict[str, Any], actor_id: str | None = None) -> str:
        name = options.get("name")
        if name is not None and name in self.names:
            raise ValueError(f"an actor named {name!r} already exists; names must be unique")
        a = Actor(actor_id or uuid.uuid4().hex, class_name, methods, cls_blob, args_blob,
                  arg_ids, options, restarts_left=options["max_restarts"])
        self.b.dir.pin(arg_ids)
        self.actors[a.id] = a
        if name is not None:
            self.names[name] = a.id
        return a.id

    def lookup(self, name: str) -> tuple[str, str, list[str]]:
        actor_id = self.names.get(name)
        if actor_id is None:
            raise ValueError(f"no live actor named {name!r}")
        a = self.actors[actor_id]
        return a.id, a.class_name, a.methods

    # -- lifecycle --------------------------------------------------------------------------------
    def schedule(self) -> None:
        for a in list(self.actors.values()):
            if a.state == "pending":
                state, failed = self.b.deps_state(_as_work(a))
                if state == "waiting":
                    continue
                if state == "failed":
                    assert failed is not None
                    self._die(a, failed[1], failed[2])
                    continue
                cpus, memory = a.options["num_cpus"], a.options["memory"]
                if not self.b.fits(cpus, memory):
                    continue
                self.b.reserve(cpus, memory)
                self.reserved.add(a.id)
                self._start(a)
            elif a.state == "alive" and a.queue:
                self._drain(a)

    def _start(self, a: Actor) -> None:
        a.state = "starting" if a.state == "pending" else "restarting"
        if self.b.idle:
            w = self.b.idle.popleft()
            w.actor, w.state, a.worker = a, "actor", w
            self._send_init(a)
        else:
            a.worker = self.b._spawn(actor=a)

    def _send_init(self, a: Actor) -> None:
        deps = self.b.deps_payload(_as_work(a))
        a.worker.send(("actor_init", a.cls_blob, a.args_blob, deps, a.options["max_concurrency"]))

    def worker_hello(self, w: WorkerProc) -> None:
        w.state = "actor"
        if w.actor.state != "dead":
            self._send_init(w.actor)

    def ready(self, w: WorkerProc) -> None:
        a: Actor = w.actor
        if a.state != "dead":
            a.state = "alive"
            self._drain(a)

    def constructor_failed(self, w: WorkerProc, blob: bytes, tb: str) -> None:
        a: Actor = w.actor
        exc = values.decode_error(blob, "")
        self._die(a, *values.encode_error(ActorDiedError(
            f"actor {a.class_name} could not start: its constructor raised "
            f"{type(exc).__name__}: {exc}"), tb))

    def worker_died(self, w: WorkerProc, how: str) -> None:
        a: Actor = w.actor
        if a.worker is not w:
            return
        a.worker = None
        for work in list(a.inflight.values()):
            self.b.finish(work, ("error", *values.encode_error(ActorDiedError(
                f"actor {a.class_name} ({a.id[:8]}) died ({how}) while running {work.name}"),
                "")))
        a.inflight.clear()
        if a.state == "dead":
            return
        if a.no_restart or a.restarts_left == 0:
            reason = "it was killed" if a.no_restart else (
                f"max_restarts={a.options['max_restarts']} restarts are used up")
            self._die(a, *values.encode_error(ActorDiedError(
                f"actor {a.class_name} ({a.id[:8]}) died ({how}) and will not restart: {reason}"),
                ""))
            return
        if a.restarts_left > 0:
            a.restarts_left -= 1
        self._start(a)

    def _die(self, a: Actor, blob: bytes, tb: str) -> None:
        a.state, a.death = "dead", (blob, tb)
        while a.queue:
            self.b.finish(a.queue.popleft(), ("error", blob, tb))
        if a.id in self.reserved:
            self.reserved.discard(a.id)
            self.b.reserve(a.options["num_cpus"], a.options["memory"], -1)
        self.b.dir.unpin(a.arg_ids)
        a.arg_ids = []
        if a.name is not None and self.names.get(a.name) == a.id:
            del self.names[a.name]
        if a.worker is not None:
            a.worker.kill()

    def kill(self, actor_id: str, no_restart: bool) -> None:
        a = self.actors.get(actor_id)
        if a is None or a.state == "dead":
            return
        a.no_restart = no_restart
        if a.worker is not None:
            a.worker.kill()
        elif no_restart:
            self._die(a, *values.encode_error(ActorDiedError(
                f"actor {a.class_name} ({a.id[:8]}) was killed"), ""))

    # -- calls ------------------------------------------------------------------------------------
    def call(self, actor_id: str, oid: str, method: str, args_blob: bytes,
             arg_ids: list[str]) -> None:
        a = self.actors.get(actor_id)
        name = f"{a.class_name if a else 'actor'}.{method}"
        work = Work(oid, name, args_blob, arg_ids, actor_id=actor_id, method=method)
        self.b.dir.entry(oid).producer = work
        self.b.dir.pin(arg_ids)
        self.b.works[oid] = work
        if a is None:
            self.b.finish(work, ("error", *values.encode_error(
                ActorDiedError(f"no actor with id {actor_id} in this runtime"), "")))
        elif a.state == "dead":
            assert a.death is not None
            self.b.finish(work, ("error", *a.death))
        else:
            a.queue.append(work)
            if a.state == "alive":
                self._drain(a)

    def _drain(self, a: Actor) -> None:
        while a.queue:
            work = a.queue[0]
            state, failed = self.b.deps_state(work)
            if state == "waiting":
                return
            a.queue.popleft()
            if state == "failed":
                self.b.finish(work, failed)
                continue
            a.inflight[work.id] = work
            work.worker = a.worker
            a.worker.send(("call", work.id, work.method, work.args_blob,
                           self.b.deps_payload(work)))

    def call_ended(self, work: Work) -> None:
        a = self.actors.get(work.actor_id)
        if a is not None:
            a.inflight.pop(work.id, None)

    def cancel(self, work: Work) -> None:
        a = self.actors.get(work.actor_id)
        if a is not None and work in a.queue:
            a.queue.remove(work)
            self.b.finish(work, ("error", *values.encode_error(
                TaskCancelledError(f"actor call {work.name} was cancelled"), "")))


def _as_work(a: Actor) -> Work:
    return Work(a.id, a.class_name, a.args_blob, a.arg_ids)
