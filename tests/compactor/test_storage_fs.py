"""The storage seam: every backend passes the same contract (file://, memory://, S3 server)."""

from __future__ import annotations

import pickle
import threading

import boto3
import pytest
from botocore.exceptions import ClientError

from compactor import InvalidTableSpec, OutsideTableRoot, Storage


def test_create_is_exclusive(table_root: str) -> None:
    storage = Storage(table_root)
    storage.create("a/b.json", b"first")
    with pytest.raises(FileExistsError):
        storage.create("a/b.json", b"second")
    assert storage.read("a/b.json") == b"first"


def test_read_list_and_missing(table_root: str) -> None:
    storage = Storage(table_root)
    for name in ("x/2.json", "x/1.json", "x/sub/3.json"):
        storage.create(name, name.encode())
    assert storage.list("x") == ["1.json", "2.json", "sub"]
    assert storage.list("nothing-here") == []
    assert storage.list("x/1.json") == []
    assert storage.read_many(["x/1.json", "x/missing.json", "x/2.json"]) == {
        "x/1.json": b"x/1.json", "x/2.json": b"x/2.json"}
    with pytest.raises(FileNotFoundError):
        storage.read("x/missing.json")


def test_racing_creates_exactly_one_wins(table_root: str) -> None:
    storage = Storage(table_root)
    barrier = threading.Barrier(8)
    wins: list[int] = []

    def race(i: int) -> None:
        barrier.wait()
        try:
            storage.create("race.json", str(i).encode())
            wins.append(i)
        except FileExistsError:
            pass

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert storage.read("race.json") == str(wins[0]).encode()


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b",
                                 "a/.."])
def test_writes_cannot_leave_the_root(table_root: str, rel: str) -> None:
    storage = Storage(table_root)
    with pytest.raises(OutsideTableRoot, match=r"table root|plain relative path"):
        storage.create(rel, b"x")
    with pytest.raises(OutsideTableRoot):
        storage.open_output(rel)


def test_storage_pickles_and_hides_credentials(s3_server: str, s3_bucket: str) -> None:
    options = {"endpoint_url": s3_server, "key": "testing", "secret": "s3cr3t-value"}
    storage = Storage(f"s3://{s3_bucket}/t", options)
    storage.create("k.json", b"1")
    assert "s3cr3t" not in repr(storage)
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.read("k.json") == b"1"


def test_s3_endpoint_from_options(s3_server: str, s3_bucket: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the environment override only the explicit option can find the server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage = Storage(f"s3://{s3_bucket}/t", {"endpoint_url": s3_server})
    storage.create("k.json", b"1")
    assert storage.list("") == ["k.json"]


def test_an_s3_endpoint_that_never_answers_is_an_error_not_a_hang(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that takes connections and never answers (a frozen server): each attempt
    gives up after its read timeout (15 s; 1 s here), botocore tries AWS_MAX_ATTEMPTS times
    (5; 2 here), and s3fs that series twice (a read: twice again), not five times: 8 attempts
    of 1 s and backoff, not 50."""
    import socket
    import time

    from compactor.fs import _S3_TIMEOUTS

    assert _S3_TIMEOUTS == {"connect_timeout": 5, "read_timeout": 15}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        storage = Storage("s3://silent/t", {
            "endpoint_url": f"http://127.0.0.1:{listener.getsockname()[1]}",
            "config_kwargs": {"read_timeout": 1}})
        assert storage.fs.retries == 2
        start = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)timeout"):
            storage.read("k.json")
        assert 7.5 < time.monotonic() - start < 25


def test_s3_server_enforces_if_none_match(s3_server: str, s3_bucket: str) -> None:
    """The guarantee commits stand on, checked on the wire without our code in between."""
    client = boto3.client("s3", endpoint_url=s3_server)
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert e.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"1"


def test_protocol_without_conditional_create_is_refused() -> None:
    with pytest.raises(InvalidTableSpec, match=r"'ftp'.*no conditional create"):
        Storage("ftp://example.invalid/t")
