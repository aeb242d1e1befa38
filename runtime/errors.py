"""The runtime's error tree.

Every failure a caller of the runtime can see is one of these (or the application's own exception,
re-raised with the remote traceback attached as ``__cause__``). Backends translate their native
errors (Ray's included) into these so callers never depend on the backend in use.
"""

from __future__ import annotations


class RuntimeBaseError(RuntimeError):
    """Base class of every error raised by the runtime itself."""


class NotInitializedError(RuntimeBaseError):
    """The runtime API was used before ``runtime.init()`` (or after ``shutdown()``)."""


class WorkerCrashedError(RuntimeBaseError):
    """The worker process running a task died, and the task's retries are used up."""


class TaskExitedError(RuntimeBaseError):
    """A task or actor call raised SystemExit or KeyboardInterrupt (``sys.exit()`` in a task):
    the task failed; the caller's program does not exit."""


class ActorDiedError(RuntimeBaseError):
    """The actor's process died (or its constructor failed) and it cannot be restarted."""


class TaskCancelledError(RuntimeBaseError):
    """The task was cancelled with ``runtime.cancel()`` before it produced a result."""


class UnschedulableError(RuntimeBaseError, ValueError):
    """The task or actor asks for more resources than the whole runtime has; it can never run."""


class ObjectLostError(RuntimeBaseError):
    """The object's data is gone (freed, or lost with the process or node that held it)."""


class ObjectStoreFullError(RuntimeBaseError):
    """The shared-memory object store has no room left for a new object."""


class GetTimeoutError(RuntimeBaseError, TimeoutError):
    """``runtime.get()`` or ``runtime.wait()`` reached its timeout before the result was ready."""


class TaskError(RuntimeBaseError):
    """A task raised an exception that could not be transported as itself (e.g. not picklable)."""


class RemoteTraceback(Exception):
    """Carries the formatted traceback of a remote failure; set as ``__cause__`` of the error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
