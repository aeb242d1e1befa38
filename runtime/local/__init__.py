"""The embedded backend: worker processes on this machine and a shared-memory object store.

Data flow (D = driver process, W = task worker, A = actor process, S = /dev/shm)::

    D: submit ──(socketpair: task spec, small args)──▶ W: run
    W: result ──write──▶ S/<session>/<object id>          (large values: never through D)
    W ──(socketpair: "done", object id, size)──▶ D: object directory marks it ready
    D or W or A: get ──mmap──▶ S/<session>/<object id>    (zero-copy Arrow/numpy buffers)

Small values (< INLINE_MAX bytes) travel inside the messages instead, which is faster than a
file. The driver owns the object directory and the scheduler; workers and actors talk only to it.
"""
