"""The job config: which tables and partitions to keep compacted, when, and how.

::

    history: jobs.sqlite            # SQLite run history (relative to this file)
    metrics: 127.0.0.1:9464         # Prometheus endpoint of `jobs run` (omit: none)
    scheduler:
      tick: 30s                     # how often triggers are evaluated
      concurrency: 4                # rounds at once, over all jobs
      lease_ttl: 60s                # a crashed scheduler's partitions are free after this
      shutdown_grace: 30s           # on SIGTERM, running rounds get this long to finish
    jobs:
      - name: orders
        table: s3://lake/orders
        storage_options: {endpoint_url: "http://minio:9000"}
        partitions: all             # or a list: ["day=2024-05-01", {day: 2024-05-02}]
                                    # (k=v,k2=v2, or as printed: k=v/k2=v%20w)
                                    # or a glob: {pattern: "day=2024-05-*"}, matched against
                                    # k=v/k2=v2 with the values unescaped
        triggers:                   # a partition is due when any of these fires
          cron: "0 * * * *"         # (timezone: UTC unless given)
          pending_deltas: 20
          pending_bytes: 1GB
          oldest_delta_age: 15m
        backend: ray                # or local (default: $COMPACTOR_BACKEND, else local)
        address: auto
        target_file_size: 256MB
        compression: zstd           # or lz4, snappy, gzip, brotli, none
        retries: {max: 3, backoff: 2s, max_backoff: 5m}    # or: retries: 3
        timeout: 30m
        concurrency: 2              # rounds of this job at once

Loaded with a safe YAML loader; every error names the file, line and field
(:class:`ConfigError`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fsspec
from croniter import CroniterBadDateError, croniter

from compactor.compaction import DEFAULT_TARGET_FILE_SIZE
from compactor.layout import PartitionKey, partition_pairs
from compactor.pipeline.materialize import CODECS, DEFAULT_CODEC
from jobs.yamlfields import ConfigError, Fields, load
from runtime.api import ADDRESS_BACKENDS, ENV_ADDRESS, backend_name

__all__ = ["Config", "ConfigError", "Job", "Partitions", "Retries", "Triggers", "load_config",
           "parse_config"]

BACKENDS = ("local", "ray")
# memory:// is left out: the runtime's worker processes cannot see the scheduler's memory
TABLE_PROTOCOLS = (None, "file", "local", "s3", "s3a")
# what compactor.layout.PartitionValue allows (datetime is a date)
PARTITION_VALUE_TYPES = (str, int, date)
DEFAULT_HISTORY = "~/.local/state/compactor/jobs.sqlite"
ENV_HISTORY = "COMPACTOR_JOBS_HISTORY"


@dataclass(frozen=True)
class Triggers:
    """When a partition is due: any configured trigger fires (and something is pending)."""

    cron: str | None = None
    timezone: str = "UTC"
    pending_deltas: int | None = None
    pending_bytes: int | None = None
    oldest_delta_age: float | None = None  # seconds


@dataclass(frozen=True)
class Partitions:
    """Which partitions of the table a job covers: all, a list, or a glob over ``k=v/k2=v2``."""

    values: tuple[dict[str, Any], ...] | None = None  # explicit partitions
    pattern: str | None = None

    def matches(self, key: PartitionKey) -> bool:
        if self.pattern is not None:
            return fnmatch.fnmatchcase(partition_text(key), self.pattern)
        return True

    def describe(self) -> str:
        if self.values is not None:
            return ", ".join(",".join(f"{k}={v}" for k, v in p.items()) for p in self.values)
        return f"matching {self.pattern!r}" if self.pattern else "all"


def partition_text(key: PartitionKey) -> str:
    """``day=2024-05-01/region=eu`` (unescaped; ``""`` for an unpartitioned table)."""
    return "/".join(f"{k}={v}" for k, v in key.items)


@dataclass(frozen=True)
class Retries:
    """Transient failures are retried ``max`` times, waiting ``backoff * 2**n`` (capped at
    ``max_backoff``) with jitter between attempts."""

    max: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0


@dataclass(frozen=True)
class Job:
    name: str
    table: str
    triggers: Triggers
    partitions: Partitions = Partitions()
    storage_options: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    address: str | None = None
    target_file_size: int = DEFAULT_TARGET_FILE_SIZE
    compression: str = DEFAULT_CODEC
    retries: Retries = Retries()
    timeout: float | None = None
    concurrency: int | None = None

    @property
    def runtime_key(self) -> tuple[str, str | None]:
        """The runtime this job's rounds run on (jobs with equal keys share one).

        ``$COMPACTOR_ADDRESS`` is Ray's: a job on the local backend ignores it (its own
        ``address`` is refused by ``runtime.init``, naming the backend).
        """
        backend = backend_name(self.backend)
        if backend not in ADDRESS_BACKENDS:
            return backend, self.address
        return backend, self.address or os.environ.get(ENV_ADDRESS) or None


@dataclass(frozen=True)
class Config:
    jobs: tuple[Job, ...]
    history: str
    metrics: tuple[str, int] | None = None  # (address, port); port 0 picks a free one
    tick: float = 30.0
    concurrency: int = 4
    lease_ttl: float = 60.0
    shutdown_grace: float = 30.0
    source: str = "<config>"
    metrics_where: str = "<config>: metrics"  # FILE:LINE: metrics, for errors found serving it


def default_history() -> str:
    return os.path.expanduser(os.environ.get(ENV_HISTORY) or DEFAULT_HISTORY)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the job config ({e.strerror or e})") from None
    return parse_config(text, str(path), base_dir=Path(path).resolve().parent)


def parse_config(text: str, source: str = "<config>", *, base_dir: Path | None = None
                 ) -> Config:
    top = load(text, source)
    top.check_keys(["history", "metrics", "scheduler", "jobs"])
    history = top.text("history")
    if history is None:
        history = default_history()
    elif base_dir is not None:
        history = str(base_dir / os.path.expanduser(history))
    sched = top.mapping("scheduler")
    settings: dict[str, Any] = {}
    if sched is not None:
        sched.check_keys(["tick", "concurrency", "lease_ttl", "shutdown_grace"])
        settings = {"tick": sched.duration("tick", 30.0),
                    "concurrency": sched.integer("concurrency", 4, minimum=1),
                    "lease_ttl": sched.duration("lease_ttl", 60.0),
                    "shutdown_grace": sched.duration("shutdown_grace", 30.0, positive=False)}
    items = top.items("jobs")
    if not items:
        raise top.error("jobs", "needs at least one job") if top.has("jobs") else \
            top.error(None, "missing required field 'jobs' (a list of jobs)")
    jobs = [_job(top.child(path, line, value)) for path, line, value in items]
    first: dict[str, int] = {}
    for (path, line, value), job in zip(items, jobs, strict=True):
        if job.name in first:
            raise top.child(path, line, value).error(
                "name", f"job name {job.name!r} is used twice (first at line {first[job.name]})")
        first[job.name] = line
    return Config(tuple(jobs), history, _metrics(top), source=source,
                  metrics_where=top.where("metrics"), **settings)


def _metrics(top: Fields) -> tuple[str, int] | None:
    value = top.raw("metrics")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        address, port = "127.0.0.1", value
    elif isinstance(value, str) and value.rpartition(":")[2].isdigit():
        host, _, number = value.rpartition(":")
        address, port = _metrics_host(top, "metrics", host), int(number)
    elif isinstance(value, dict):
        metrics = top.mapping("metrics")
        assert metrics is not None
        metrics.check_keys(["address", "port"])
        address = _metrics_host(metrics, "address", metrics.text("address", "127.0.0.1"))
        port = metrics.integer("port", 9464)
    else:
        raise top.error("metrics", f"expected PORT, ADDRESS:PORT or {{address, port}}, "
                                   f"got {value!r}")
    if not 0 <= port <= 65535:
        raise top.error("metrics", f"port {port} is not between 0 and 65535")
    return address, port


def _metrics_host(f: Fields, key: str, host: str) -> str:
    """The host to bind, as the socket calls take it: an IPv6 address is written in brackets
    before a port (``[::1]:9464``) but bound without them. Whether a host name resolves is
    only known where the scheduler runs: ``jobs run`` reports that (see ``metrics_where``)."""
    if not host:
        return "127.0.0.1"
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    if bracketed or ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise f.error(key, f"{host!r} is not an IPv6 address") from None
        if not bracketed and key == "metrics":
            raise f.error(key, f"write the IPv6 address in brackets before the port, e.g. "
                               f"[{bare}]:9464")
    return bare


def _job(f: Fields) -> Job:
    f.check_keys(["name", "table", "storage_options", "partitions", "triggers", "backend",
                  "address", "target_file_size", "compression", "retries", "timeout",
                  "concurrency"])
    options = f.mapping("storage_options")
    table = f.text("table", required=True)
    protocol = fsspec.core.split_protocol(table)[0]
    if protocol not in TABLE_PROTOCOLS:
        raise f.error("table", f"{table!r}: protocol {protocol!r} is not supported for "
                               "scheduled jobs; use a local path, file:// or s3://")
    backend = f.text("backend", choices=BACKENDS)
    address = f.text("address")
    if backend == "local" and address is not None:
        raise f.error("address", "the local backend takes no address (it is for backend: ray)")
    return Job(
        name=f.text("name", required=True),
        table=table,
        storage_options=dict(options.data) if options else {},
        partitions=_partitions(f),
        triggers=_triggers(f),
        backend=backend,
        address=address,
        target_file_size=f.size("target_file_size", DEFAULT_TARGET_FILE_SIZE),
        compression=f.text("compression", DEFAULT_CODEC, choices=CODECS),
        retries=_retries(f),
        timeout=f.duration("timeout"),
        concurrency=f.integer("concurrency", minimum=1),
    )


def _partitions(f: Fields) -> Partitions:
    value = f.raw("partitions")
    if value is None or value == "all":
        return Partitions()
    if isinstance(value, dict):
        sub = f.mapping("partitions")
        assert sub is not None
        sub.check_keys(["pattern"])
        return Partitions(pattern=sub.text("pattern", required=True))
    if isinstance(value, str):
        raise f.error("partitions", f"{value!r}: write 'all', a list of partitions, or "
                                    f"{{pattern: {value!r}}} for a glob pattern")
    values = []
    for path, line, item in f.items("partitions"):
        values.append(_partition_values(f, path, line, item))
    if not values:
        raise f.error("partitions", "the list is empty; write 'all' for every partition")
    return Partitions(values=tuple(values))


def _partition_values(f: Fields, path: str, line: int, item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return _partition_mapping(f.child(path, line, item))
    if isinstance(item, str):
        try:  # (as -p takes it: 'k=v,k2=v2', or as partitions are printed, 'k=v/k2=v%20w')
            return dict(partition_pairs(item))
        except ValueError:
            pass
    raise ConfigError(f"{f.source}:{line}: {path}: {item!r} is not a partition; write "
                      "'day=2024-05-01,region=eu' or {day: 2024-05-01, region: eu}")


def _partition_mapping(p: Fields) -> dict[str, Any]:
    """``{day: 2024-05-01, region: eu}`` with each value checked here, at its line: YAML also
    reads null, floats, lists and mappings, which no partition has (see ``PartitionValue``), and
    the table would only refuse them at run time, naming neither the file nor the line."""
    values: dict[str, Any] = {}
    for key, value in p.data.items():
        if not isinstance(key, str) or not key.strip():
            raise p.error(str(key), f"{key!r} is not a partition column name (expected text)")
        if not isinstance(value, PARTITION_VALUE_TYPES):
            raise p.error(key, f"{_describe(value)} is not a partition value; write text, a "
                               "whole number, true/false or a date")
        values[key] = value
    return values


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return f"a mapping {dict(value)!r}"
    if isinstance(value, list):
        return f"a list {list(value)!r}"
    return f"{type(value).__name__} {value!r}"


def _triggers(f: Fields) -> Triggers:
    t = f.mapping("triggers")
    if t is None:
        raise f.error("triggers" if "triggers" in f.data else None,
                      "missing required field 'triggers' (cron and/or pending_deltas, "
                      "pending_bytes, oldest_delta_age)")
    t.check_keys(["cron", "timezone", "pending_deltas", "pending_bytes", "oldest_delta_age"])
    timezone = t.text("timezone", "UTC")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise t.error("timezone", f"unknown time zone {timezone!r} (e.g. UTC, "
                                  "Europe/Berlin)") from None
    cron = t.text("cron")
    if cron is not None:
        problem = _cron_problem(cron, zone)
        if problem is not None:
            raise t.error("cron", problem)
    triggers = Triggers(cron, timezone, t.integer("pending_deltas", minimum=1),
                        t.size("pending_bytes"), t.duration("oldest_delta_age"))
    if (cron, triggers.pending_deltas, triggers.pending_bytes,
            triggers.oldest_delta_age) == (None, None, None, None):
        raise t.error(None, "needs at least one trigger: cron, pending_deltas, pending_bytes "
                            "or oldest_delta_age")
    return triggers


CRON_FIELDS = ("five fields: minute hour day-of-month month day-of-week, e.g. '*/15 * * * *', "
               "or @hourly, @daily, @weekly, @monthly, @yearly")


def _cron_problem(cron: str, zone: ZoneInfo) -> str | None:
    """What is wrong with ``cron``, or ``None``.

    croniter also takes six or seven fields (seconds, year) and would read such an expression
    differently from what the docs promise, so only five are allowed. A well-formed expression
    may still name no date at all (``0 0 30 2 *``): croniter fails on that only when asked for
    the next fire, at run time, so the next fire is computed here.
    """
    fields = len(cron.split())
    if fields in (6, 7):
        return f"{cron!r} has {fields} fields, but seconds and year fields are not " \
               f"supported; write {CRON_FIELDS}"
    shortcut = fields == 1 and cron.startswith("@")  # @hourly, @daily, ... (five fields)
    if (fields != 5 and not shortcut) or not croniter.is_valid(cron):
        return f"{cron!r} is not a valid cron expression ({CRON_FIELDS})"
    try:
        croniter(cron, datetime.now(zone)).get_next(float)
    except CroniterBadDateError:
        return f"{cron!r} never fires: no date matches its day-of-month and month " \
               "(e.g. 30 February or 31 April)"
    return None


def _retries(f: Fields) -> Retries:
    value = f.raw("retries")
    if value is None:
        return Retries()
    if not isinstance(value, dict):
        return Retries(max=f.integer("retries", minimum=0))
    r = f.mapping("retries")
    assert r is not None
    r.check_keys(["max", "backoff", "max_backoff"])
    retries = Retries(r.integer("max", 3, minimum=0), r.duration("backoff", 1.0, positive=False),
                      r.duration("max_backoff", 60.0, positive=False))
    if retries.max_backoff < retries.backoff:
        raise r.error("max_backoff", f"{retries.max_backoff:g}s is less than the backoff "
                                     f"{retries.backoff:g}s")
    return retries
