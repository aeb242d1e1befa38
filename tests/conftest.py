"""Fixtures shared by every test package: a real S3 API server and table roots on each backend.

- ``s3_server``  (session) moto's ``ThreadedMotoServer`` on 127.0.0.1 at a free port, reached
  over HTTP by s3fs/boto3 like any S3-compatible endpoint (not in-process ``mock_aws``
  patching). Yields the endpoint URL; the server stops when the session ends.
- ``s3_bucket``  a fresh, empty bucket on that server; yields its name.
- ``table_root`` a fresh table root URL, parametrized over ``file://``, ``memory://`` and
  ``s3://``, so one test runs against all three.

No test traffic may leave this machine. For the whole session the AWS environment holds dummy
credentials and region, no profile or config files, no instance-metadata (IMDS) lookups, and an
endpoint override (``AWS_ENDPOINT_URL``): a closed local port until the server starts, the server
afterwards. Subprocesses inherit it, so CLI tests can pass bare ``s3://`` URLs.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator

import pytest

_CLOSED_LOCAL_ENDPOINT = "http://127.0.0.1:9"  # discard port: nothing listens

_AWS_SANDBOX = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_ENDPOINT_URL": _CLOSED_LOCAL_ENDPOINT,
}


@pytest.fixture(scope="session", autouse=True)
def _aws_sandbox() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        for name, value in _AWS_SANDBOX.items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def s3_server(_aws_sandbox: None) -> Iterator[str]:
    """Endpoint URL of an S3 API server on 127.0.0.1 (moto, over real HTTP)."""
    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # moto checks a PutObject's If-None-Match and then stores the object, two steps that
    # requests in its server's threads can interleave: under load two racing commits both
    # got number 23. S3 decides a conditional write atomically; so does this server, one
    # PutObject at a time.
    put_object, one_at_a_time = S3Response.put_object, threading.Lock()

    def atomic_put_object(self: S3Response) -> object:
        with one_at_a_time:
            return put_object(self)

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(S3Response, "put_object", atomic_put_object)
            server.start()
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh bucket on the S3 server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:20]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["file", "memory", "s3"])
def table_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    """A URL where no table exists yet, on each storage backend in turn."""
    if request.param == "file":
        yield f"file://{tmp_path_factory.mktemp('table')}/t"
    elif request.param == "memory":
        import fsspec

        root = f"/test-{uuid.uuid4().hex}"
        yield f"memory://{root}/t"
        fs = fsspec.filesystem("memory")
        if fs.exists(root):
            fs.rm(root, recursive=True)
    else:
        yield f"s3://{request.getfixturevalue('s3_bucket')}/t"
