"""S3 faults: throttling, 5xx answers, dropped connections, slow answers, and the server gone.

Everything the table does on S3 (metadata, commits, Parquet reads and writes, from the driver
and the worker processes) goes through ``tests.faults.proxy.FaultProxy`` in front of the S3 API
server. Retries are bounded (botocore standard mode, see ``compactor.fs``): at a 5% fault rate
a round completes with the oracle's result; with the server gone a round fails, publishes
nothing, and a rerun once it is back converges. Reads for checking go to the server directly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

import runtime
from compactor import CommitUnknown, create_table, open_table
from compactor.compaction import compact_partition
from compactor.gc import collect_garbage
from compactor.reader import read_partition
from tests.compactor.test_compaction import SCHEMA
from tests.faults.conftest import Figures
from tests.faults.proxy import FaultProxy
from tests.faults.trials import Stream

FAULT_RATE = 0.05


@pytest.fixture
def proxy(s3_server: str, fault_seed: int) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server, seed=fault_seed) as p:
        yield p


def _record(figures: Figures, proxy: FaultProxy, trial: str) -> None:
    figures.trials[trial] += 1
    for kind, n in proxy.injected.items():
        figures.injected[f"S3 {kind}"] += n


def test_rounds_at_5_percent_faults_match_the_oracle(rt, proxy, s3_bucket, fault_seed, figures):
    proxy.rate = FAULT_RATE
    rng = random.Random(fault_seed)
    stream = Stream.new(f"s3://{s3_bucket}/t", figures, buckets=4,
                        storage_options={"endpoint_url": proxy.url})
    table = stream.table
    for _ in range(3):
        stream.random_deltas(rng, 3, 1_500, 3_000)
        result = compact_partition(table, stream.part, target_file_size=20_000)
        assert result.committed
        stream.check()
    direct = open_table(table.url, storage_options={"endpoint_url": proxy.upstream_url})
    assert read_partition(direct, direct.partition()).num_rows == \
        read_partition(table, stream.part).num_rows
    assert [e.get("kind") for e in stream.part.log.read_from(1)].count("compaction") == 3
    _record(figures, proxy, "S3 at 5% faults")
    assert proxy.counts["requests"] > 200 and sum(proxy.injected.values()) >= 5, proxy.counts


def test_lost_answers_to_conditional_creates_are_not_lost_commits(rt, s3_server, s3_bucket,
                                                                   fault_seed, figures):
    # Half the PUTs take effect but their answer is lost: the retried conditional create then
    # finds the object. Reading it back tells our own commit (or table) from another's.
    with FaultProxy(s3_server, rate=0.5, kinds=("lost_reply",), methods=("PUT",),
                    seed=fault_seed) as proxy:
        rng = random.Random(fault_seed)
        stream = Stream.new(f"s3://{s3_bucket}/t", figures, buckets=2,
                            storage_options={"endpoint_url": proxy.url})
        table = stream.table
        for _ in range(2):
            stream.random_deltas(rng, 3, 500, 1_000)
            assert compact_partition(table, stream.part, target_file_size=20_000).committed
            stream.check()
        entries = stream.part.log.read_from(1)
        assert [e["kind"] for e in entries] == ["delta"] * 3 + ["compaction"] + \
            ["delta"] * 3 + ["compaction"]
        assert len({e["commit_id"] for e in entries}) == len(entries)
        _record(figures, proxy, "S3 lost answers to PUTs")
        assert proxy.injected["lost_reply"] >= 5


def _compacted_with_pending_deltas(proxy: FaultProxy, bucket: str, seed: int,
                                   figures: Figures) -> Stream:
    """A table on S3 through ``proxy``, compacted once, with two deltas pending."""
    rng = random.Random(seed)
    stream = Stream.new(f"s3://{bucket}/t", figures, buckets=2,
                        storage_options={"endpoint_url": proxy.url})
    stream.random_deltas(rng, 2, 1_000, 2_000)
    assert compact_partition(stream.table, stream.part, target_file_size=20_000).committed
    stream.random_deltas(rng, 2, 1_000, 2_000)
    return stream


def test_a_commit_that_landed_though_its_answers_were_lost_is_committed_not_cleaned_up(
        rt, s3_server, s3_bucket, fault_seed, figures, monkeypatch):
    """The round's commit reaches the server but its answer is lost, and every retry of it
    fails: the round reads the log back, finds its commit, and reports it. (It deleted the
    files the commit names, and every later read and round of the partition failed.)"""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with FaultProxy(s3_server, seed=fault_seed) as proxy:
        stream = _compacted_with_pending_deltas(proxy, s3_bucket, fault_seed, figures)
        commits: list[str] = []

        def lose_the_commit(method: str, path: str) -> str | None:
            if method != "PUT" or "/_log/" not in path:
                return None
            commits.append(path)
            return "lost_reply" if len(commits) == 1 else "reset"

        def at_commit(step: str, done: int, *_: int) -> None:
            if step == "commit" and done == 0:
                proxy.script = lose_the_commit

        result = compact_partition(stream.table, stream.part, target_file_size=20_000,
                                   progress=at_commit)
        proxy.script = None
        assert len(commits) >= 2 and result.committed  # (the first landed; the rest failed)
        assert [e["kind"] for e in stream.part.log.read_from(1)].count("compaction") == 2
        stream.check()
        assert compact_partition(stream.table, stream.part).committed is False
    figures.trials["S3 commit answer lost, retries failed"] += 1


def test_a_commit_that_cannot_be_read_back_is_unknown_and_keeps_its_files(
        rt, s3_server, s3_bucket, fault_seed, figures, monkeypatch):
    """The commit lands but its answer is lost; its retry finds it there (412), and reading
    the log back fails: the round cannot tell whether it committed. It says so
    (``CommitUnknown``) and deletes nothing: the commit had landed, and names its files."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with FaultProxy(s3_server, seed=fault_seed) as proxy:
        stream = _compacted_with_pending_deltas(proxy, s3_bucket, fault_seed, figures)
        puts: list[str] = []

        def lose_the_answer_then_the_log(method: str, path: str) -> str | None:
            if "/_log/" not in path:
                return None
            if method == "PUT":
                puts.append(path)
                return "lost_reply" if len(puts) == 1 else None
            return "reset" if puts else None

        def at_commit(step: str, done: int, *_: int) -> None:
            if step == "commit" and done == 0:
                proxy.script = lose_the_answer_then_the_log

        with pytest.raises(CommitUnknown, match="whether it was committed is unknown"):
            compact_partition(stream.table, stream.part, target_file_size=20_000,
                              progress=at_commit)
        proxy.script = None
        assert len(puts) == 2  # (the retry found it there)
        assert [e["kind"] for e in stream.part.log.read_from(1)].count("compaction") == 2
        stream.check()  # the files of the commit that landed are all there
    figures.trials["S3 commit unknown"] += 1


# (not "dedupe": warm dedupe actors make no request, so the server would go in materialize)
@pytest.mark.parametrize("step", ["hash_bucket", "materialize", "commit"])
def test_server_gone_mid_round_publishes_nothing_and_a_rerun_converges(
        proxy, s3_server, s3_bucket, fault_seed, figures, monkeypatch, step):
    # Fewer attempts than the default, to keep the test short: each request the round makes
    # while the server is gone fails after 2 attempts instead of 5.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    rng = random.Random(fault_seed)
    url = f"s3://{s3_bucket}/t"
    table = create_table(url, SCHEMA, primary_key=["id"], ordering_column="lsn",
                         bucket_count=4, storage_options={"endpoint_url": proxy.url})
    direct = open_table(url, storage_options={"endpoint_url": s3_server})
    stream = Stream(table, figures)
    with runtime.init("local", num_cpus=2):
        stream.random_deltas(rng, 2, 2_000, 3_000)
        compact_partition(table, stream.part, target_file_size=20_000)
        stream.random_deltas(rng, 2, 2_000, 3_000)
        version = direct.partition().version()
        before = read_partition(direct, direct.partition())

        def server_goes(reported: str, done: int, total: int, *_: int) -> None:
            if reported == step and done == 0:
                proxy.down_after(0 if step == "commit" else rng.randrange(3))

        start = time.monotonic()
        with pytest.raises(Exception) as failure:
            compact_partition(table, stream.part, target_file_size=20_000,
                              progress=server_goes)
        failed_after = time.monotonic() - start
        assert "Could not connect" in str(failure.value) or \
            "Connection" in type(failure.value).__name__, failure.value
        assert direct.partition().version() == version  # nothing published
        assert read_partition(direct, direct.partition()).equals(before)
        assert failed_after < 120, f"the failure took {failed_after:.0f} s"

        proxy.up()  # the server is back: the same round, run again, converges
        assert compact_partition(table, stream.part, target_file_size=20_000).committed
        stream.check()
    # what the failed round could not delete is unreferenced: gc finds exactly that
    swept = collect_garbage(direct, older_than=0)
    assert swept.referenced == swept.files - len(swept.removed)
    stream.check()
    figures.trials["S3 server gone"] += 1
    figures.injected[f"S3 server gone ({step})"] += 1
    figures.outcomes["rolled_back"] += 1
