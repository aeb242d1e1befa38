"""Leases: one holder at a time, renewal, expiry and takeover, on local files and on S3."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from compactor import PartitionKey, Storage
from jobs.leases import LEASES_DIR, Lease, LeaseLost, Leases
from tests.jobs.conftest import ManualClock

DAY = PartitionKey((("day", "2024-05-01"),))
TTL = 30.0


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Storage]:
    """A table root on local files, or on the S3 API server (conditional writes over HTTP)."""
    if request.param == "file":
        yield Storage(f"file://{tmp_path_factory.mktemp('t')}/t")
    else:
        yield Storage(f"s3://{request.getfixturevalue('s3_bucket')}/t")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def leases(storage: Storage, clock: ManualClock, owner: str) -> Leases:
    return Leases(storage, owner, TTL, clock)


def test_one_holder_until_release(storage: Storage, clock: ManualClock) -> None:
    a, b = leases(storage, clock, "a"), leases(storage, clock, "b")
    lease = a.acquire(DAY)
    assert lease is not None and lease.epoch == 1 and lease.owner == "a"
    assert b.acquire(DAY) is None and a.acquire(DAY) is None  # held, also against itself
    assert b.holder(DAY) == lease
    a.release(lease)
    assert b.holder(DAY) is None
    taken = b.acquire(DAY)
    assert taken is not None and taken.owner == "b" and taken.epoch == 3


def test_renewal_extends_the_lease_and_old_epochs_are_cleaned(storage: Storage,
                                                              clock: ManualClock) -> None:
    a, b = leases(storage, clock, "a"), leases(storage, clock, "b")
    lease = a.acquire(DAY)
    assert lease is not None
    for _ in range(3):
        clock.advance(TTL * 0.6)  # renewed in time
        lease = a.renew(lease)
        assert a.valid(lease) and b.acquire(DAY) is None
    assert lease.epoch == 4 and lease.expires_at == clock.now() + TTL
    assert storage.list(f"{LEASES_DIR}/{DAY.dir}") == [f"{4:020d}.json"]


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(storage: Storage,
                                                                  clock: ManualClock) -> None:
    a, b = leases(storage, clock, "a"), leases(storage, clock, "b")
    lease = a.acquire(DAY)
    assert lease is not None
    clock.advance(TTL * 0.8)
    assert not a.valid(lease)  # the holder stops trusting it a margin before expiry ...
    assert b.acquire(DAY) is None  # ... while others still respect it
    clock.advance(TTL * 0.2)
    taken = b.acquire(DAY)  # expired (a crashed, or stalled): taken over
    assert taken is not None and taken.epoch == 2
    with pytest.raises(LeaseLost, match="taken over by b"):
        a.renew(lease)
    a.release(lease)  # a late release does not free b's lease
    assert a.holder(DAY) == taken


def test_a_stalled_contender_cannot_win_with_an_epoch_already_cleaned_up(
        storage: Storage, clock: ManualClock) -> None:
    a, b = leases(storage, clock, "a"), leases(storage, clock, "b")
    first = a.acquire(DAY)
    assert first is not None
    clock.advance(TTL)  # b reads epoch 1 expired, then stalls before creating epoch 2 ...
    stale_view = b.current(DAY)
    lease = a.acquire(DAY)  # ... meanwhile a takes epoch 2, renews to 3 and cleans up 1 and 2
    assert lease is not None
    lease = a.renew(lease)
    assert stale_view is not None and stale_view.epoch == 1
    stale = Lease(DAY, stale_view.epoch + 1, "b", clock.now() + TTL)
    assert not b._create(stale)  # epoch 2 can be created again, but it is not the newest
    assert b.holder(DAY) == lease
    assert a.renew(lease).epoch == 4


def test_racing_contenders_exactly_one_wins(storage: Storage, clock: ManualClock) -> None:
    contenders = [leases(storage, clock, f"s{i}") for i in range(6)]
    for round_ in range(2):  # a free lease, then an expired one
        barrier = threading.Barrier(len(contenders))
        won: list[Lease] = []

        def contend(c: Leases, barrier: threading.Barrier, won: list[Lease]) -> None:
            barrier.wait()
            lease = c.acquire(DAY)
            if lease is not None:
                won.append(lease)

        threads = [threading.Thread(target=contend, args=(c, barrier, won)) for c in contenders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"round {round_}: {won}"
        clock.advance(TTL)
