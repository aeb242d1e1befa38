"""Prometheus metrics of a scheduler, served over HTTP for scraping.

=======================================================  =========  ===========================
metric                                                   type       labels
=======================================================  =========  ===========================
``compactor_jobs_runs_total``                            counter    job, outcome
``compactor_jobs_round_duration_seconds``                histogram  job
``compactor_jobs_rows_compacted_total``                  counter    job  (rows read into rounds)
``compactor_jobs_rows_written_total``                    counter    job  (rows in the output)
``compactor_jobs_bytes_read_total`` / ``_written_total`` counter    job
``compactor_jobs_retries_total``                         counter    job
``compactor_jobs_pending_deltas``                        gauge      job, partition
``compactor_jobs_pending_bytes``                         gauge      job, partition
``compactor_jobs_oldest_pending_delta_age_seconds``      gauge      job, partition
``compactor_jobs_leases_held``                           gauge      job
``compactor_jobs_evaluation_errors_total``               counter    job
=======================================================  =========  ===========================

The pending gauges are the compaction lag: refreshed whenever a job's partitions are evaluated.
Each :class:`Metrics` has its own registry, so several schedulers can live in one process.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from jobs.history import Run
from jobs.triggers import Pending

_ROUND_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("compactor_jobs_runs", "Compaction rounds by outcome",
                            ["job", "outcome"], registry=r)
        self.duration = Histogram("compactor_jobs_round_duration_seconds",
                                  "Wall time of finished rounds", ["job"],
                                  buckets=_ROUND_BUCKETS, registry=r)
        self.rows_in = Counter("compactor_jobs_rows_compacted", "Rows read into rounds",
                               ["job"], registry=r)
        self.rows_out = Counter("compactor_jobs_rows_written", "Rows in the rounds' output",
                                ["job"], registry=r)
        self.bytes_read = Counter("compactor_jobs_bytes_read", "Bytes rounds read", ["job"],
                                  registry=r)
        self.bytes_written = Counter("compactor_jobs_bytes_written", "Bytes rounds wrote",
                                     ["job"], registry=r)
        self.retries = Counter("compactor_jobs_retries", "Attempts retried after a transient "
                               "failure", ["job"], registry=r)
        self.pending_deltas = Gauge("compactor_jobs_pending_deltas", "Deltas above the "
                                    "watermark", ["job", "partition"], registry=r)
        self.pending_bytes = Gauge("compactor_jobs_pending_bytes", "Bytes of the deltas above "
                                   "the watermark", ["job", "partition"], registry=r)
        self.pending_age = Gauge("compactor_jobs_oldest_pending_delta_age_seconds",
                                 "Age of the oldest delta above the watermark",
                                 ["job", "partition"], registry=r)
        self.leases = Gauge("compactor_jobs_leases_held", "Partition leases this scheduler "
                            "holds", ["job"], registry=r)
        self.evaluation_errors = Counter("compactor_jobs_evaluation_errors", "Failures to read "
                                         "a job's table or partitions", ["job"], registry=r)
        self._server: WSGIServer | None = None

    def observe_pending(self, job: str, partition: str, pending: Pending, now: float) -> None:
        self.pending_deltas.labels(job, partition).set(pending.deltas)
        self.pending_bytes.labels(job, partition).set(pending.bytes)
        self.pending_age.labels(job, partition).set(pending.age(now))

    def observe_run(self, run: Run) -> None:
        self.runs.labels(run.job, run.outcome).inc()
        if run.duration is not None:
            self.duration.labels(run.job).observe(run.duration)
        for counter, value in ((self.rows_in, run.rows_in), (self.rows_out, run.rows_out),
                               (self.bytes_read, run.bytes_read),
                               (self.bytes_written, run.bytes_written)):
            if value:
                counter.labels(run.job).inc(value)
        if run.attempts > 1:
            self.retries.labels(run.job).inc(run.attempts - 1)

    def serve(self, address: str, port: int) -> str:
        """Serve ``/metrics`` at ``address:port`` (0: a free port) in a thread; its URL."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{server.server_port}/metrics"

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
