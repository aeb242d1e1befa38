"""How the driver reacts to each message a worker sends (see ``worker.py``, ``client.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.errors import ObjectLostError
from runtime.local import values
from runtime.local.work import Work

if TYPE_CHECKING:
    from runtime.local.driver import LocalBackend
    from runtime.local.processes import WorkerProc


class MessageHandler:
    def __init__(self, backend: LocalBackend) -> None:
        self.b = backend
        self.requests: dict[str, Callable[[WorkerProc, int, Any], None]] = {
            "get": self.req_get, "wait": self.req_wait, "create_actor": self.req_create_actor,
            "get_actor": self.req_get_actor, "info": self.req_info,
        }

    def handle(self, w: WorkerProc, msg: tuple) -> None:
        getattr(self, "on_" + msg[0])(w, *msg[1:])

    def on_hello(self, w: WorkerProc) -> None:
        if w.actor is not None:
            self.b.actors.worker_hello(w)
            return
        self.b.starting -= 1
        self.b.start_failures = 0
        self.b.went_idle(w)

    def on_refs(self, w: WorkerProc, held: list[str], released: list[str]) -> None:
        for oid in held:
            self.b.dir.hold(w.id, oid)
            w.held.add(oid)
        for oid in released:
            w.held.discard(oid)
            self.b.dir.release(w.id, oid)

    def _ended(self, w: WorkerProc, oid: str) -> Work | None:
        work = self.b.works.get(oid)
        if work is None:
            return None
        if work.actor_id:
            self.b.actors.call_ended(work)
        elif w.work is work:
            self.b._task_ended(w)
            self.b.went_idle(w)
        return work

    def on_done(self, w: WorkerProc, oid: str, loc: Any, contained: list[str]) -> None:
        work = self._ended(w, oid)
        if work is None:
            self.b.dir.set_ready(oid, loc, contained)  # its entry is gone: this frees it
            return
        self.b.finish(work, loc=loc, contained=contained)

    def on_fail(self, w: WorkerProc, oid: str, blob: bytes, tb: str) -> None:
        work = self._ended(w, oid)
        if work is None:
            return
        if not work.actor_id and work.retries_left != 0 and self._retryable(work, blob):
            work.retries_left -= 1
            self.b.queue.appendleft(work)
            return
        self.b.finish(work, ("error", blob, tb))

    @staticmethod
    def _retryable(work: Work, blob: bytes) -> bool:
        rule = work.options.get("retry_exceptions", False)
        if rule is True:
            return True
        if not rule:
            return False
        return isinstance(values.decode_error(blob, ""), tuple(rule))

    def on_actor_ready(self, w: WorkerProc) -> None:
        self.b.actors.ready(w)

    def on_actor_failed(self, w: WorkerProc, blob: bytes, tb: str) -> None:
        self.b.actors.constructor_failed(w, blob, tb)

    def on_submit(self, w: WorkerProc, oid: str, fn_id: str, fn_blob: bytes, name: str,
                  args_blob: bytes, arg_ids: list[str], options: dict[str, Any]) -> None:
        self.b.code.setdefault(fn_id, fn_blob)
        try:
            self.b.check_fits(f"task {name}", options["num_cpus"], options["memory"],
                              options["scheduling"])
        except Exception as e:
            self.b.dir.entry(oid)
            self.b.fail_object(oid, e)
            return
        self.b._add_task(oid, fn_id, name, args_blob, arg_ids, options)

    def on_call_actor(self, w: WorkerProc, oid: str, actor_id: str, method: str,
                      args_blob: bytes, arg_ids: list[str]) -> None:
        self.b.actors.call(actor_id, oid, method, args_blob, arg_ids)

    def on_put(self, w: WorkerProc, oid: str, loc: Any, contained: list[str]) -> None:
        self.b.dir.entry(oid)
        self.b.dir.set_ready(oid, loc, contained)

    def on_cancel(self, w: WorkerProc, oid: str, force: bool) -> None:
        self.b.cancel_id(oid)

    def on_kill(self, w: WorkerProc, actor_id: str, no_restart: bool) -> None:
        self.b.actors.kill(actor_id, no_restart)

    def on_req(self, w: WorkerProc, rid: int, kind: str, payload: Any) -> None:
        self.requests[kind](w, rid, payload)

    # -- requests: answered with ("reply", rid, value) ---------------------------------------------
    def req_get(self, w: WorkerProc, rid: int, ids: list[str]) -> None:
        unknown = [oid for oid in ids if oid not in self.b.dir.entries]
        if unknown:
            err = values.encode_error(ObjectLostError(
                f"object {unknown[0]} is unknown to this runtime (freed?)"), "")
            w.send(("reply", rid, [("error", *err) for _ in ids]))
            return
        work = w.work
        if work is not None and not w.blocked:
            w.blocked = True  # give its CPUs back while it waits, so nested tasks can run
            self.b.reserve(work.cpus, 0, -1)

        def reply(done: list[str]) -> None:
            if w.blocked and w.work is work:
                w.blocked = False
                self.b.reserve(work.cpus, 0)
            w.send(("reply", rid, [self.b.dir.outcome(oid) for oid in ids]))

        self.b.add_waiter(ids, len(ids), None, reply)

    def req_wait(self, w: WorkerProc, rid: int, payload: tuple) -> None:
        ids, num_returns, timeout = payload

        def reply(done: list[str]) -> None:
            w.send(("reply", rid, done[:num_returns] if num_returns else done))

        self.b.add_waiter(ids, num_returns, timeout, reply)

    def req_create_actor(self, w: WorkerProc, rid: int, payload: tuple) -> None:
        actor_id, cls_blob, class_name, methods, args_blob, arg_ids, options = payload
        try:
            self.b.check_fits(f"actor {class_name}", options["num_cpus"], options["memory"],
                              options["scheduling"])
            self.b.actors.create(class_name, methods, cls_blob, args_blob, arg_ids, options,
                                 actor_id)
        except Exception as e:
            w.send(("reply", rid, ("error", values.encode_error(e, "")[0])))
            return
        w.send(("reply", rid, ("ok",)))

    def req_get_actor(self, w: WorkerProc, rid: int, name: str) -> None:
        try:
            w.send(("reply", rid, ("ok", self.b.actors.lookup(name))))
        except ValueError as e:
            w.send(("reply", rid, ("error", values.encode_error(e, "")[0])))

    def req_info(self, w: WorkerProc, rid: int, what: str) -> None:
        w.send(("reply", rid, getattr(self.b, what)()))
