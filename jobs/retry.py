"""Which failures of a round are worth retrying, and how long to wait before the next attempt.

Transient (retried up to the job's limit): the runtime lost a worker, an actor or an object
(``WorkerCrashedError``, ``ActorDiedError``, ``ObjectLostError``, ``GetTimeoutError``), another
round committed first (``CommitConflict``: the next attempt plans from the new state), and storage
that is slow or briefly unreachable (S3 throttling, ``SlowDown``/503/500 answers, timeouts,
dropped connections), wherever they sit in the exception's cause chain.

Permanent (recorded with their message, never retried): every other ``CompactorError`` (schema
conflict, missing or changed file, corrupt Parquet, null key, no such table...), wrong
credentials, and anything not known to be transient: retrying what is not understood would only
repeat it.
"""

from __future__ import annotations

import errno
import random

import runtime
from compactor.errors import CommitConflict, CompactorError
from jobs.config import Retries

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    runtime.WorkerCrashedError, runtime.ActorDiedError, runtime.ObjectLostError,
    runtime.GetTimeoutError, CommitConflict, TimeoutError, ConnectionError,
)
# OSError numbers s3fs and the OS give to throttling, 5xx answers and network trouble
_TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EREMOTEIO, errno.ETIMEDOUT, errno.EAGAIN,
                               errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
                               errno.EHOSTUNREACH, errno.ENETUNREACH})
# botocore / aiohttp exceptions, by name (neither package is needed to run a local table)
_TRANSIENT_NAMES = frozenset({
    "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError",
    "ConnectionClosedError", "ServerTimeoutError", "ClientConnectorError",
    "ServerDisconnectedError", "ClientOSError",
})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
    "ServiceUnavailable", "InternalError", "500", "502", "503", "504",
})


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_transient(error: BaseException) -> bool:
    """Whether a new attempt may succeed where ``error`` failed."""
    if isinstance(error, CompactorError) and not isinstance(error, CommitConflict):
        return False
    for e in _chain(error):
        if isinstance(e, _TRANSIENT_TYPES) or type(e).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and type(e) is OSError and e.errno in _TRANSIENT_ERRNOS:
            return True
        code = getattr(e, "response", None)
        if isinstance(code, dict) and code.get("Error", {}).get("Code") in _TRANSIENT_CODES:
            return True
    return False


def backoff(retries: Retries, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped, with
    "equal jitter" (uniform in the upper half) so racing schedulers spread out."""
    ceiling = min(retries.max_backoff, retries.backoff * 2 ** (attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)
