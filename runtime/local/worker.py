"""Main loop of a worker process: runs tasks, or hosts one actor.

Forked by the zygote (``zygote.py``), or started by the driver as ``python -m
runtime.local.worker FD STORE_ROOT WORKER_ID NODE_ID``, with one end of a socketpair as FD. Threads:

- the channel's reader thread: receives from the driver (see ``channel.py``);
- the main thread: runs tasks and actor calls in arrival order;
- for an actor with ``max_concurrency > 1``, a pool of that many threads runs its calls.

Inside a worker, the runtime API talks to the driver through ``WorkerBackend``, so tasks can
submit tasks, call actors, put and get.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from runtime.errors import TaskExitedError
from runtime.local import serialization, values
from runtime.local.channel import Channel
from runtime.local.store import ObjectStore
from runtime.local.zygote import set_name
from runtime.worker_settings import release_free_memory


class Worker:
    def __init__(self, channel: Channel, store: ObjectStore) -> None:
        self.channel = channel
        self.store = store
        self.functions: dict[str, Any] = {}
        self.actor: Any = None
        self.pool: ThreadPoolExecutor | None = None

    def serve(self) -> None:
        handlers: dict[str, Callable[..., None]] = {
            "task": self.run_task, "actor_init": self.init_actor, "call": self.call,
            "trim": release_free_memory,  # an idle task worker's, when the driver says
        }
        while True:
            msg = self.channel.inbox.get()
            handler = handlers[msg[0]]
            if self.pool is not None and msg[0] == "call":
                self.pool.submit(handler, *msg[1:])
            else:
                handler(*msg[1:])

    def _inputs(self, args_blob: bytes, deps: dict[str, Any]) -> tuple[tuple, dict]:
        resolved = {oid: values.decode_value(loc, self.store, oid) for oid, loc in deps.items()}
        return values.resolve_args(args_blob, resolved)

    def _finish(self, object_id: str, fn: Any, args_blob: bytes, deps: dict[str, Any]) -> None:
        # The result stays alive until "done" is sent: refs it contains must reach the driver
        # (which then keeps them alive for the result) before this process lets go of them.
        result: Any = None
        pid = os.getpid()
        try:
            args, kwargs = self._inputs(args_blob, deps)
            result = fn(*args, **kwargs)
            del args, kwargs
            _check_process(pid)
            loc, contained = values.encode_value(result, self.store, object_id)
        except BaseException as e:
            _check_process(pid)
            if not isinstance(e, Exception):  # sys.exit() in a task fails the task, and
                # does not end the caller's program
                e = TaskExitedError(
                    f"{getattr(fn, '__qualname__', 'the task')} raised "
                    f"{type(e).__name__}{e.args!r}: a task that exits fails, its caller goes on")
            blob, tb = values.encode_error(e)
            self.channel.send(("fail", object_id, blob, tb))
            return
        self.channel.send(("done", object_id, loc, contained))
        del result

    def run_task(self, task_id: str, fn_id: str, fn_blob: bytes | None, args_blob: bytes,
                 deps: dict[str, Any]) -> None:
        fn = self.functions.get(fn_id)
        if fn is None:
            try:
                fn = serialization.loads_small(fn_blob).function  # type: ignore[arg-type]
            except BaseException as e:
                blob, tb = values.encode_error(e)
                self.channel.send(("fail", task_id, blob, tb))
                return
            self.functions[fn_id] = fn
        self._finish(task_id, fn, args_blob, deps)

    def init_actor(self, cls_blob: bytes, args_blob: bytes, deps: dict[str, Any],
                   max_concurrency: int) -> None:
        try:
            cls = serialization.loads_small(cls_blob).cls
            args, kwargs = self._inputs(args_blob, deps)
            self.actor = cls(*args, **kwargs)
        except BaseException as e:
            blob, tb = values.encode_error(e)
            self.channel.send(("actor_failed", blob, tb))
            return
        if max_concurrency > 1:
            self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="actor")
        self.channel.send(("actor_ready",))

    def call(self, call_id: str, method: str, args_blob: bytes, deps: dict[str, Any]) -> None:
        self._finish(call_id, getattr(self.actor, method), args_blob, deps)


def _check_process(pid: int) -> None:
    """A child a task forked that returned into the worker's loop: it must not answer for the
    worker (it has its socket, not its reader thread); it ends here."""
    if os.getpid() != pid:
        os._exit(0)


def main(argv: list[str]) -> None:
    fd, store_root, worker_id, node_id = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are the driver's to handle
    set_name("runtime-worker")
    from runtime import api
    from runtime.local.client import WorkerBackend

    channel = Channel(Connection(int(fd)), store_root)
    store = ObjectStore(store_root)
    api._set_backend(WorkerBackend(channel, store, worker_id, node_id))
    channel.send(("hello",))
    Worker(channel, store).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
