"""The scheduler's Prometheus metrics, scraped over HTTP from 127.0.0.1."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from compactor import Partition, Table
from compactor.compaction import compact_partition
from jobs.scheduler import Scheduler
from tests.jobs.conftest import config, make_table, rows

pytestmark = pytest.mark.usefixtures("rt")


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_served_for_prometheus(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", ["2024-05-01", "2024-05-02"], deltas=2)
    bad = table.partition({"day": "2024-05-02"})
    Path(bad.snapshot().deltas[0].files[0].url.removeprefix("file://")).unlink()
    in_round = threading.Event()
    go_on = threading.Event()

    def observed(table: Table, partition: Partition, **kwargs: Any) -> Any:
        if partition.values == {"day": "2024-05-01"}:
            in_round.set()
            go_on.wait(30)
        return compact_partition(table, partition, **kwargs)

    scheduler = Scheduler(config(table.url, tmp_path), compact=observed)
    url = scheduler.metrics.serve("127.0.0.1", 0)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    runner = threading.Thread(target=scheduler.run_once)
    runner.start()
    assert in_round.wait(30)
    during = scrape(url)
    go_on.set()
    runner.join(60)
    table.partition({"day": "2024-05-01"}).append(rows(range(7), "late", 1000))
    scheduler.evaluate()  # refreshes the pending gauges (the trigger would start a round later)
    after = scrape(url)
    scheduler.shutdown()

    assert value(during, "compactor_jobs_leases_held", job="daily") >= 1
    assert value(during, "compactor_jobs_pending_deltas", job="daily",
                 partition="day=2024-05-01") == 2
    assert value(during, "compactor_jobs_pending_bytes", job="daily",
                 partition="day=2024-05-01") > 0
    assert value(after, "compactor_jobs_runs_total", job="daily", outcome="succeeded") == 1
    assert value(after, "compactor_jobs_runs_total", job="daily", outcome="failed") == 1
    assert value(after, "compactor_jobs_round_duration_seconds_count", job="daily") == 2
    assert value(after, "compactor_jobs_rows_compacted_total", job="daily") == 400
    assert value(after, "compactor_jobs_rows_written_total", job="daily") == 300
    assert value(after, "compactor_jobs_bytes_written_total", job="daily") > 0
    assert value(after, "compactor_jobs_leases_held", job="daily") == 0
    assert value(after, "compactor_jobs_pending_deltas", job="daily",
                 partition="day=2024-05-01") == 1
    assert value(after, "compactor_jobs_pending_bytes", job="daily",
                 partition="day=2024-05-02") > 0  # failed: still pending
    assert value(after, "compactor_jobs_oldest_pending_delta_age_seconds", job="daily",
                 partition="day=2024-05-02") > 0
    with pytest.raises(OSError):
        scrape(url)  # the server stopped with the scheduler
