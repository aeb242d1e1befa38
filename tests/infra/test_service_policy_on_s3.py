"""infra/aws/iam-policy.json is enough to run the service, and holds it to the table prefix.

An S3 API server on 127.0.0.1 (moto, in its own process) that enforces IAM: the command line
runs as a user holding only the service policy, with the bucket names filled in, through the
guide's path: create a table, register exported files in place, compact, verify; and a failed
round's clean-up (DeleteObject). Writing outside the table prefix is refused.

moto checks actions and resources but evaluates no ``s3:prefix`` condition (it treats one as
unmet), so the policy is loaded without its one condition, on the sources' listing; that
condition is checked as written in test_policies_and_manifests.py.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from compactor.faults import ENV as FAULT_ENV
from tests.infra.deployment import SERVICE_POLICY

EXECUTABLE = Path(sys.executable).parent / "compactor"
TABLE = "s3://lake/tables/orders"
SOURCE = "s3://exports/exports/orders/LOAD0001.parquet"
ADMIN = {"AWS_ACCESS_KEY_ID": "admin", "AWS_SECRET_ACCESS_KEY": "admin"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def service_env() -> Iterator[dict[str, str]]:
    """The environment of a process that holds only the service policy."""
    endpoint = f"http://127.0.0.1:{_free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", endpoint.rsplit(":")[-1]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the S3 API server did not start"
                time.sleep(0.1)
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("AWS_") and k not in (FAULT_ENV, "COMPACTOR_BACKEND",
                                                          "COMPACTOR_ADDRESS")}
        base.update(AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                    AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
                    AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_ENDPOINT_URL=endpoint)
        session = boto3.Session(region_name="us-east-1", aws_access_key_id="admin",
                                aws_secret_access_key="admin")
        s3 = session.client("s3", endpoint_url=endpoint)
        iam = session.client("iam", endpoint_url=endpoint)
        for bucket in ("lake", "exports"):
            s3.create_bucket(Bucket=bucket)
        out = io.BytesIO()
        pq.write_table(pa.table({"id": pa.array(range(1000), pa.int64()),
                                 "v": [f"v{i}" for i in range(1000)],
                                 "lsn": pa.array(range(1000), pa.int64())}), out)
        s3.put_object(Bucket="exports", Key=SOURCE.split("/", 3)[3], Body=out.getvalue())

        document = json.loads(SERVICE_POLICY.read_text()
                              .replace("CHANGE-ME-table-bucket", "lake")
                              .replace("CHANGE-ME-export-bucket", "exports"))
        for statement in document["Statement"]:
            statement.pop("Condition", None)  # see the module doc
        iam.create_user(UserName="compactor")
        arn = iam.create_policy(PolicyName="compactor-s3",
                                PolicyDocument=json.dumps(document))["Policy"]["Arn"]
        iam.attach_user_policy(UserName="compactor", PolicyArn=arn)
        key = iam.create_access_key(UserName="compactor")["AccessKey"]
        # from here on every request is authenticated and authorized
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        yield {**base, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXECUTABLE), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def _keys(env: dict[str, str], prefix: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_the_guides_path_runs_with_the_service_policy_alone(service_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    steps = [
        ("table", "create", TABLE, "-k", "id", "--order-by", "lsn",
         "--schema", "id:int64 not null,v:string,lsn:int64"),
        ("append", TABLE, "--kind", "upsert", SOURCE),  # referenced in place, read-only
        ("compact", TABLE),
        ("verify", TABLE),
    ]
    for args in steps:
        done = _run(service_env, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"

    # a round that fails after writing its files deletes them again (s3:DeleteObject)
    _run(service_env, "append", TABLE, "--kind", "upsert", SOURCE)
    before = _keys(service_env, "tables/")
    failed = _run({**service_env, FAULT_ENV: f"commit:raise:{tmp_path / 'fired'}"},
                  "compact", TABLE)
    assert failed.returncode == 1 and "injected fault" in failed.stderr
    assert _keys(service_env, "tables/") == before


@pytest.mark.parametrize("url", ["s3://lake/other/t", "s3://exports/exports/t"])
def test_writes_outside_the_table_prefix_are_refused(service_env: dict[str, str],
                                                      url: str) -> None:
    done = _run(service_env, "table", "create", url, "-k", "id", "--schema", "id:int64 not null")
    assert done.returncode == 1 and "Access Denied" in done.stderr
