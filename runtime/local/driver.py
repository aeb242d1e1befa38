"""The local backend's driver side: scheduler, object directory and worker processes.

Threads in the driver process:

- the caller's threads run the public API (submit, get, put, ...), under ``self.lock``;
- one loop thread receives every message from the workers and reacts (results, failures,
  nested submissions, requests), also under ``self.lock``, and notices dead workers (EOF).

Scheduling: queued tasks run in submission order as their arguments become ready, as long as the
sum of the ``num_cpus`` and ``memory`` of running tasks and live actors stays within the budget.
A task that asks for more than the whole budget is refused at submission. A worker that blocks
in ``get`` inside a task gives back its CPUs until it is answered, so nested tasks cannot
deadlock the pool. Worker processes are started on demand and reused; each actor gets its own.
The loop also tells idle task workers when to give their free memory back (``_trim_idle``).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import wait as wait_for_conns
from typing import Any

import psutil

from runtime.backend import Backend
from runtime.errors import (
    GetTimeoutError,
    NotInitializedError,
    ObjectLostError,
    UnschedulableError,
    WorkerCrashedError,
)
from runtime.local import serialization, values
from runtime.local.actors import ActorManager
from runtime.local.directory import FAILED, PENDING, ObjectDirectory, Waiter
from runtime.local.processes import WorkerProc, Zygote, ZygoteUnavailable, worker_env
from runtime.local.refs import LocalObjectRef, tracker
from runtime.local.store import ObjectStore
from runtime.local.work import Work
from runtime.refs import ObjectRef
from runtime.remote import ActorClass, ActorHandle, RemoteFunction
from runtime.scheduling import NodeAffinity, PlacementGroupSlot
from runtime.worker_settings import IDLE_TRIM_SECONDS, QUIET_TRIM_SECONDS

DRIVER = "driver"
MEMORY_FRACTION = 0.8  # default memory budget: this share of the machine's RAM
MAX_START_FAILURES = 3  # consecutive worker start-up crashes before queued work fails


def _new_id() -> str:
    return uuid.uuid4().hex


class LocalBackend(Backend):
    name = "local"

    def __init__(self, num_cpus: float | None = None, memory: int | None = None,
                 *, store_parent: str | None = None, preload: Sequence[str] = ()) -> None:
        cpus = float(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
        mem = float(memory if memory is not None
                    else int(psutil.virtual_memory().total * MEMORY_FRACTION))
        if cpus <= 0 or mem <= 0:
            raise ValueError(f"num_cpus and memory must be > 0 (got {cpus}, {mem})")
        self.session_id = _new_id()[:12]
        self.node_id = f"local-{self.session_id}"
        self.total = {"CPU": cpus, "memory": mem}
        self.available = dict(self.total)
        self.store = ObjectStore.create(self.session_id, store_parent)
        self.workers: dict[str, WorkerProc] = {}
        self.zygote: Zygote | None = None
        try:
            self._start(cpus, preload)
        except BaseException:  # (Ctrl-C while the zygote imports, too): leave nothing behind
            for w in self.workers.values():
                w.kill()
            if self.zygote is not None:
                self.zygote.close()
            self.store.destroy()
            raise

    def _start(self, cpus: float, preload: Sequence[str]) -> None:
        self.dir = ObjectDirectory(self.store)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.works: dict[str, Work] = {}
        self.queue: deque[Work] = deque()  # tasks not yet running
        self._failures_seen = 0  # the directory's failures when the queue was last scanned
        self._zero_cpu_queued = 0  # queued works asking for no CPU (they fit a full machine)
        self.idle: deque[WorkerProc] = deque()
        # whether any task or actor call is queued or running, and since when (idle workers
        # are told to give their free memory back by it: ``_trim_idle``)
        self._busy, self._busy_changed = False, time.monotonic()
        self.starting = 0
        self.start_failures = 0
        self.code: dict[str, bytes] = {}  # function id -> pickled function
        self.env = worker_env()
        try:
            self.zygote = Zygote(self.store.root, self.env, preload)
        except ZygoteUnavailable as e:
            warnings.warn(f"runtime: workers start as new interpreters, not forked from a "
                          f"zygote ({e})", RuntimeWarning, stacklevel=3)
        self.closed = False
        self.actors = ActorManager(self)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        tracker.reset()
        tracker.on_release = self._wake
        with self.lock:
            for _ in range(math.ceil(cpus)):
                self._spawn()
        self._loop_thread = threading.Thread(target=self._loop, name="runtime-driver", daemon=True)
        self._loop_thread.start()

    # == helpers ==================================================================================
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def went_idle(self, w: WorkerProc) -> None:
        """Task worker ``w`` has nothing to run."""
        w.state, w.idle_since, w.trimmed = "idle", time.monotonic(), False
        self.idle.append(w)

    def _note_busy(self, now: float) -> None:
        busy = bool(self.works)
        if busy != self._busy:
            self._busy, self._busy_changed = busy, now
            self._wake()  # the loop's wait for the next trim due changes with it

    def _trim_idle(self) -> float | None:
        """Tell each idle task worker to give its free memory back once it has idled
        IDLE_TRIM_SECONDS while other work runs, or QUIET_TRIM_SECONDS while none does
        (``runtime.worker_settings``); the time of the next such message due, if any."""
        now = time.monotonic()
        self._note_busy(now)
        wait = IDLE_TRIM_SECONDS if self._busy else QUIET_TRIM_SECONDS
        due = None
        for w in self.idle:
            if w.trimmed:
                continue
            # (idle QUIET_TRIM_SECONDS in all, however often work came and went meanwhile)
            at = min(w.idle_since + QUIET_TRIM_SECONDS,
                     max(w.idle_since, self._busy_changed) + wait)
            if at <= now:
                w.trimmed = True
                w.send(("trim",))
            elif due is None or at < due:
                due = at
        return due

    def _check_open(self) -> None:
        if self.closed:
            raise NotInitializedError("the runtime has been shut down")

    def _flush_refs(self) -> None:
        held, released = tracker.drain()
        for oid in held:
            self.dir.hold(DRIVER, oid)
        for oid in released:
            self.dir.release(DRIVER, oid)

    def _spawn(self, actor: Any = None) -> WorkerProc:
        w = WorkerProc(_new_id()[:16], self.store.root, self.node_id, self.env, self.zygote)
        w.actor = actor
        self.workers[w.id] = w
        if actor is None:
            self.starting += 1
        self._wake()  # the loop must start listening to it
        return w

    def check_fits(self, what: str, cpus: float, memory: int, scheduling: Any) -> None:
        if cpus > self.total["CPU"] or memory > self.total["memory"]:
            raise UnschedulableError(
                f"{what} asks for num_cpus={cpus:g}, memory={memory} bytes, but the runtime has "
                f"only CPU={self.total['CPU']:g}, memory={int(self.total['memory'])} bytes in "
                "all; it can never run (lower the request or raise init(num_cpus=, memory=))"
            )
        if isinstance(scheduling, NodeAffinity) and not scheduling.soft \
                and scheduling.node_id != self.node_id:
            raise UnschedulableError(
                f"{what} is pinned to node {scheduling.node_id!r}, which does not exist "
                f"(the local backend has one node: {self.node_id!r})"
            )
        if isinstance(scheduling, PlacementGroupSlot):
            raise UnschedulableError(
                f"{what} asks for a placement group; the local backend runs on one node and has "
                "none (use scheduling='SPREAD' or the ray backend)"
            )

    def _check_known(self, ids: list[str]) -> None:
        unknown = [oid for oid in ids if oid not in self.dir.entries]
        if unknown:
            raise ObjectLostError(
                f"object {unknown[0]} is unknown to this runtime: freed, or a ref from an "
                "earlier runtime session"
            )

    def fits(self, cpus: float, memory: int) -> bool:
        return (cpus <= self.available["CPU"] + 1e-9
                and memory <= self.available["memory"] + 0.5)

    def reserve(self, cpus: float, memory: int, sign: int = 1) -> None:
        self.available["CPU"] -= sign * cpus
        self.available["memory"] -= sign * memory

    def fail_object(self, oid: str, exc: BaseException, tb: str = "") -> None:
        self.dir.set_failed(oid, values.encode_error(exc, tb))

    # == tasks ====================================================================================
    def submit_task(self, fn: RemoteFunction, args: tuple, kwargs: dict,
                    options: dict[str, Any]) -> ObjectRef:
        self._check_open()
        self.check_fits(f"task {fn.__qualname__}", options["num_cpus"], options["memory"],
                        options["scheduling"])
        blob = self.code.get(fn.function_id)
        if blob is None:
            blob, _ = serialization.dumps_small(fn)
        args_blob, arg_ids = values.dump_args(args, kwargs)
        ref = LocalObjectRef(_new_id())
        with self.lock:
            self._flush_refs()
            self.code.setdefault(fn.function_id, blob)
            self._add_task(ref.id, fn.function_id, fn.__qualname__, args_blob, arg_ids, options)
            self._schedule()
        return ref

    def _add_task(self, oid: str, fn_id: str, name: str, args_blob: bytes, arg_ids: list[str],
                  options: dict[str, Any]) -> None:
        work = Work(oid, name, args_blob, arg_ids, fn_id=fn_id, options=options,
                    retries_left=options["max_retries"], cpus=options["num_cpus"],
                    memory=options["memory"])
        self.dir.entry(oid).producer = work
        self.dir.pin(arg_ids)
        self.works[oid] = work
        state, failed = self.deps_state(work)
        if state == "failed":  # an input failed already: so does it, now (the scheduler may
            self.finish(work, failed)  # not look this far down the queue for a while)
            return
        self._enqueue(work)

    def _enqueue(self, work: Work, first: bool = False) -> None:
        if first:
            self.queue.appendleft(work)
        else:
            self.queue.append(work)
        self._zero_cpu_queued += work.cpus <= 1e-9

    def _unqueue(self, work: Work) -> None:
        self.queue.remove(work)
        self._zero_cpu_queued -= work.cpus <= 1e-9

    def deps_state(self, work: Work) -> tuple[str, tuple | None]:
        """("ready"|"waiting"|"failed", the failed dependency's outcome)."""
        for oid in work.arg_ids:
            e = self.dir.entries.get(oid)
            if e is None or e.state == PENDING:
                return "waiting", None
            if e.state == FAILED:
                return "failed", self.dir.outcome(oid)
        return "ready", None

    def deps_payload(self, work: Work) -> dict[str, Any]:
        return {oid: self.dir.outcome(oid) for oid in dict.fromkeys(work.arg_ids)}

    def finish(self, work: Work, outcome: tuple | None = None, *, loc: Any = None,
               contained: list[str] | None = None) -> None:
        """Record a work's final result (``loc``) or failure (``outcome`` = error triple)."""
        self.works.pop(work.id, None)
        if loc is not None:
            self.dir.set_ready(work.id, loc, contained or [])
        else:
            assert outcome is not None
            self.dir.set_failed(work.id, (outcome[1], outcome[2]))
        self.dir.unpin(work.arg_ids)
        self.changed.notify_all()

    def _schedule(self) -> None:
        """Start whatever queued work can run now. Called under the lock after any change."""
        if self.closed:
            return
        self._note_busy(time.monotonic())
        need = 0
        # resources of the runnable work that waits for a worker: only what would fit beside it
        # needs a new process (else every queued task counts, and a burst of tasks starts more
        # workers than can ever run at once)
        waiting_cpus, waiting_memory = 0.0, 0
        blocked = sum(1 for w in self.workers.values() if w.blocked)
        cap = max(4, 2 * math.ceil(self.total["CPU"])) + blocked
        task_workers = sum(1 for w in self.workers.values() if w.actor is None)
        # Once no worker is idle and no more would be started, the rest of the queue can wait
        # for the next change: a scan of all of it at every submit and every finished task made
        # a burst of N tasks cost N**2 (8,000 tasks: 20 s). Only a failed object (a task whose
        # input failed must fail too) asks for the whole queue.
        whole = self.dir.failures != self._failures_seen
        self._failures_seen = self.dir.failures
        for work in list(self.queue):
            if not whole and not self.idle and (
                    need - self.starting >= cap - task_workers
                    or (self.available["CPU"] <= 1e-9 and not self._zero_cpu_queued)):
                break
            state, failed = self.deps_state(work)
            if state == "waiting":
                continue
            if state == "failed":
                self._unqueue(work)
                self.finish(work, failed)
                continue
            if not self.fits(work.cpus, work.memory):
                continue
            if not self.idle:
                if self.fits(work.cpus + waiting_cpus, work.memory + waiting_memory):
                    need += 1
                    waiting_cpus += work.cpus
                    waiting_memory += work.memory
                continue
            self._unqueue(work)
            self._dispatch(work, self.idle.popleft())
        self.actors.schedule()
        task_workers = sum(1 for w in self.workers.values() if w.actor is None)
        for _ in range(min(need - self.starting, cap - task_workers)):
            self._spawn()

    def _dispatch(self, work: Work, w: WorkerProc) -> None:
        self.reserve(work.cpus, work.memory)
        work.worker, w.work, w.state = w, work, "busy"
        code = None if work.fn_id in w.functions else self.code[work.fn_id]
        w.functions.add(work.fn_id)
        w.send(("task", work.id, work.fn_id, code, work.args_blob, self.deps_payload(work)))

    def _task_ended(self, w: WorkerProc) -> Work:
        work: Work = w.work
        w.work, work.worker = None, None
        if w.blocked:
            w.blocked = False
        else:
            self.reserve(work.cpus, 0, -1)
        self.reserve(0, work.memory, -1)
        return work

    # == actors (ActorManager does the work) ======================================================
    def create_actor(self, cls: ActorClass, args: tuple, kwargs: dict,
                     options: dict[str, Any]) -> ActorHandle:
        self._check_open()
        self.check_fits(f"actor {cls.__name__}", options["num_cpus"], options["memory"],
                        options["scheduling"])
        cls_blob, _ = serialization.dumps_small(cls)
        args_blob, arg_ids = values.dump_args(args, kwargs)
        methods = cls.method_names()
        with self.lock:
            self._flush_refs()
            actor_id = self.actors.create(cls.__name__, methods, cls_blob, args_blob, arg_ids,
                                          options)
            self._schedule()
        return ActorHandle(actor_id, cls.__name__, methods)

    def submit_actor_task(self, handle: ActorHandle, method: str, args: tuple,
                          kwargs: dict) -> ObjectRef:
        self._check_open()
        args_blob, arg_ids = values.dump_args(args, kwargs)
        ref = LocalObjectRef(_new_id())
        with self.lock:
            self._flush_refs()
            self.actors.call(handle.actor_id, ref.id, method, args_blob, arg_ids)
            self._note_busy(time.monotonic())  # (sent straight to the actor: no _schedule)
        return ref

    def get_actor(self, name: str) -> ActorHandle:
        self._check_open()
        with self.lock:
            actor_id, class_name, methods = self.actors.lookup(name)
        return ActorHandle(actor_id, class_name, methods)

    def kill(self, handle: ActorHandle, *, no_restart: bool = True) -> None:
        self._check_open()
        with self.lock:
            self.actors.kill(handle.actor_id, no_restart)

    # == objects ==================================================================================
    def put(self, value: Any) -> ObjectRef:
        self._check_open()
        ref = LocalObjectRef(_new_id())
        loc, contained = values.encode_value(value, self.store, ref.id)
        with self.lock:
            self._flush_refs()
            self.dir.entry(ref.id)
            self.dir.set_ready(ref.id, loc, contained)
        return ref

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        self._check_open()
        ids = [r.id for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            self._flush_refs()
            self._check_known(ids)
            done = 0  # ids[:done] are done (they stay so): each wake-up looks on from there
            while True:
                while done < len(ids) and self.dir.is_done(ids[done]):
                    done += 1
                missing = ids[done:done + 1]
                if not missing:
                    break
                if self.closed:
                    raise NotInitializedError("the runtime was shut down while waiting in get()")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    late = sum(not self.dir.is_done(oid) for oid in ids[done:])
                    raise GetTimeoutError(
                        f"runtime.get() timed out after {timeout} s: {late} of "
                        f"{len(ids)} object(s) not ready (first: {missing[0]})"
                    )
                self.changed.wait(remaining)
            outcomes = [self.dir.outcome(oid) for oid in ids]
        return values.decode_outcomes(ids, outcomes, self.store)

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            self._flush_refs()
            self._check_known([r.id for r in refs])
            while True:
                done = {r.id for r in refs if self.dir.is_done(r.id)}
                remaining = None if deadline is None else deadline - time.monotonic()
                if len(done) >= num_returns or (remaining is not None and remaining <= 0) \
                        or self.closed:
                    break
                self.changed.wait(remaining)
        ready = [r for r in refs if r.id in done][:max(num_returns, 0) or None]
        ready_ids = {r.id for r in ready}
        return ready, [r for r in refs if r.id not in ready_ids]

    def cancel(self, ref: ObjectRef, *, force: bool = False) -> None:
        self._check_open()
        with self.lock:
            self._flush_refs()
            self.cancel_id(ref.id)

    def cancel_id(self, oid: str) -> None:
        from runtime.errors import TaskCancelledError

        work = self.works.get(oid)
        if work is None:
            return  # finished already, or not ours
        if work.actor_id:
            self.actors.cancel(work)
            return
        work.cancelled = True
        if work in self.queue:
            self._unqueue(work)
            self.fail_object(oid, TaskCancelledError(f"task {work.name} was cancelled"))
            self.works.pop(oid, None)
            self.dir.unpin(work.arg_ids)
            self.changed.notify_all()
        elif work.worker is not None:
            work.worker.kill()  # its death is reported by the loop, which sees .cancelled

    # == cluster ==================================================================================
    def nodes(self) -> list[dict[str, Any]]:
        return [{"node_id": self.node_id, "alive": True, "resources": dict(self.total)}]

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.total)

    def available_resources(self) -> dict[str, float]:
        with self.lock:
            return {k: max(0.0, v) for k, v in self.available.items()}

    def shutdown(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            workers = list(self.workers.values())
            self.changed.notify_all()
        self.store.destroy()  # first: a driver killed during shutdown leaves no store behind
        for w in workers:
            w.kill()
        for w in workers:
            w.reap()
            w.close()
        if self.zygote is not None:  # (after the reaping: it reports the workers' exits)
            self.zygote.close()
        self._wake()
        self._loop_thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        tracker.on_release = None
        self.store.destroy()

    # == the loop: messages from workers ==========================================================
    def _loop(self) -> None:
        from runtime.local.messages import MessageHandler

        handler = MessageHandler(self)
        while True:
            with self.lock:
                if self.closed:
                    return
                conns = {w.conn: w for w in self.workers.values()}
                deadlines = [d for d in (self.dir.next_deadline(), self._trim_idle())
                             if d is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = wait_for_conns([*conns, self._wake_r], timeout)
            with self.lock:
                if self.closed:
                    return
                for c in ready:
                    if c == self._wake_r:
                        os.read(self._wake_r, 4096)
                        continue
                    w = conns[c]  # type: ignore[index]
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        self.worker_died(w)
                        continue
                    handler.handle(w, msg)
                self._flush_refs()
                self.dir.notify()
                self._schedule()
                self.changed.notify_all()

    def worker_died(self, w: WorkerProc) -> None:
        from runtime.errors import TaskCancelledError

        w.close()
        w.kill()
        w.reap()
        self.workers.pop(w.id, None)
        if w in self.idle:
            self.idle.remove(w)
        if w.state == "starting" and w.actor is None:
            self.starting -= 1
            self.start_failures += 1
        w.state = "dead"
        for oid in list(w.held):
            self.dir.release(w.id, oid)
        how = w.exit_description()
        if w.actor is not None:
            self.actors.worker_died(w, how)
        elif w.work is not None:
            work = self._task_ended(w)
            if work.cancelled:
                self.finish(work, ("error", *values.encode_error(
                    TaskCancelledError(f"task {work.name} was cancelled"), "")))
            elif work.retries_left != 0:
                work.retries_left -= 1
                self._enqueue(work, first=True)
            else:
                err = WorkerCrashedError(
                    f"the worker process (pid {w.pid}) running task {work.name} died ({how}); "
                    f"no retries left (max_retries={work.options['max_retries']})"
                )
                self.finish(work, ("error", *values.encode_error(err, "")))
        if self.start_failures >= MAX_START_FAILURES:
            self._fail_all_queued(WorkerCrashedError(
                f"worker processes keep dying at start-up ({how}); see their output above"
            ))

    def _fail_all_queued(self, exc: BaseException) -> None:
        while self.queue:
            work = self.queue[0]
            self._unqueue(work)
            self.finish(work, ("error", *values.encode_error(exc, "")))
        self.start_failures = 0

    def add_waiter(self, ids: list[str], need: int, timeout: float | None,
                   reply: Any) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.dir.add_waiter(Waiter(ids, need, deadline, reply))
