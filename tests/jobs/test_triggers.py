"""Triggers decide with the time they are given: a manual clock stands in for real minutes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobs.config import Triggers
from jobs.history import History
from jobs.scheduler import Scheduler
from jobs.triggers import Pending, cron_fired, due, next_fire
from tests.jobs.conftest import ManualClock, config, make_table, rows


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOW = at("2024-05-01T10:30:00")
SOME = Pending(deltas=3, bytes=3000, oldest_committed_at=NOW - 600)


def test_nothing_pending_is_never_due() -> None:
    everything = Triggers("* * * * *", "UTC", 1, 1, 0.0)
    assert due(everything, Pending(), NOW, fired=NOW) is None


@pytest.mark.parametrize("triggers, reason", [
    (Triggers(pending_deltas=3), "3 pending deltas >= 3"),
    (Triggers(pending_bytes=2500), "3000 pending bytes >= 2500"),
    (Triggers(oldest_delta_age=600), "oldest pending delta is 600s old >= 600s"),
    (Triggers(pending_deltas=2, pending_bytes=10), "3 pending deltas >= 2; 3000 pending bytes"),
])
def test_each_threshold_fires_at_its_limit(triggers: Triggers, reason: str) -> None:
    assert reason in (due(triggers, SOME, NOW) or "")


@pytest.mark.parametrize("triggers", [Triggers(pending_deltas=4), Triggers(pending_bytes=3001),
                                      Triggers(oldest_delta_age=601)])
def test_below_every_threshold_is_not_due(triggers: Triggers) -> None:
    assert due(triggers, SOME, NOW) is None


def test_cron_fires_once_a_fire_time_has_passed_since_the_mark() -> None:
    hourly = Triggers(cron="0 * * * *")
    mark = at("2024-05-01T10:05:00")
    assert cron_fired(hourly, mark, at("2024-05-01T10:59:59")) is None
    fired = cron_fired(hourly, mark, at("2024-05-01T11:00:00"))
    assert fired == at("2024-05-01T11:00:00")
    assert due(hourly, SOME, at("2024-05-01T11:00:00"), fired) == \
        "cron '0 * * * *' fired at 2024-05-01T11:00:00+00:00"
    # fire times missed meanwhile coalesce: the first one after the mark is reported
    assert cron_fired(hourly, mark, at("2024-05-01T15:20:00")) == at("2024-05-01T11:00:00")
    assert cron_fired(hourly, None, NOW) is None  # no mark: not seen before


def test_cron_in_a_time_zone() -> None:
    # 02:00 in Berlin (CEST, UTC+2) is 00:00 UTC
    assert next_fire("0 2 * * *", "Europe/Berlin", at("2024-05-01T12:00:00")) == \
        at("2024-05-02T00:00:00")


# -- the scheduler with a manual clock ----------------------------------------------------------
@pytest.mark.usefixtures("rt")
def test_a_cron_job_runs_at_each_fire_time_and_not_before(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", ["2024-05-01"])
    part = table.partition({"day": "2024-05-01"})
    cfg = config(table.url, tmp_path, triggers='{cron: "0 * * * *"}')
    clock = ManualClock(at("2024-05-01T10:05:00"))

    def once() -> list[str]:
        scheduler = Scheduler(cfg, clock=clock)
        try:
            return [r.outcome for r in scheduler.run_once()]
        finally:
            scheduler.shutdown()

    assert once() == []  # first seen: the schedule starts now
    clock.advance(50 * 60)
    assert once() == []  # 10:55
    clock.advance(5 * 60)
    assert once() == ["succeeded"]  # 11:00
    part.append(rows(range(10), "late", 1000))
    assert once() == []  # the 11:00 fire is used up, also across scheduler restarts
    clock.advance(3 * 3600)
    assert once() == ["succeeded"]  # 14:00: three missed fires, one round
    clock.advance(3600)
    assert once() == []  # 15:00 fired with nothing pending
    part.append(rows(range(10), "later", 2000))
    clock.advance(30 * 60)
    assert once() == []  # ... so the delta at 15:30 waits for 16:00
    clock.advance(30 * 60)
    assert once() == ["succeeded"]
    with History(cfg.history) as history:
        assert history.recent()[0].trigger == \
            "cron '0 * * * *' fired at 2024-05-01T16:00:00+00:00"


@pytest.mark.usefixtures("rt")
def test_the_age_trigger_follows_the_clock(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", ["2024-05-01", "2024-05-02"])
    cfg = config(table.url, tmp_path, triggers="{oldest_delta_age: 2h}")
    clock = ManualClock(time.time() + 3600)  # the deltas were committed an hour "ago"
    scheduler = Scheduler(cfg, clock=clock)
    assert scheduler.run_once() == []
    clock.advance(3600)
    # the two rounds run at once: the records come in the order they finish
    assert sorted(r.partition for r in scheduler.run_once()) == ["day=2024-05-01", "day=2024-05-02"]
    scheduler.shutdown()
