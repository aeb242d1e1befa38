"""A corpus of bad input, through the ``compactor`` executable: each kind is refused with one
readable line naming the thing at fault, a non-zero exit, and the table unchanged.

Every case starts from a table holding data (two deltas, one compacted round for some), snapshots
every file under the table root and beside it (paths, sizes, modification times), runs one
command, and checks: exit code 1 (2 for a usage error), ``error: ...`` as the last line on stderr
and the only error line, no traceback, the named culprit in it, and the snapshot unchanged.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli.conftest import EXECUTABLE, compactor, upserts, write_parquet

SCHEMA = "id:int64 not null,v:string,lsn:int64"


def _parquet(rows: dict[str, list[object]] | pa.Table, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(rows if isinstance(rows, pa.Table) else pa.table(rows), buffer, **kwargs)
    return buffer.getvalue()


GOOD = _parquet(upserts(list(range(100, 120)), "new", 500))


@dataclass
class Case:
    args: list[str]
    mentions: list[str]  # the error line names these
    env: dict[str, str] = field(default_factory=dict)
    code: int = 1


@dataclass
class Workspace:
    """A table (``url``, partitioned by ``day`` if asked) beside a directory of input files."""

    root: Path
    partitioned: bool = False

    @property
    def url(self) -> str:
        return str(self.root / "table")

    @property
    def part(self) -> list[str]:
        return ["-p", "day=d1"] if self.partitioned else []

    def file(self, name: str, data: bytes) -> str:
        path = self.root / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def run(self, *args: object, **kwargs: object) -> None:
        run = compactor(*args, **kwargs)  # type: ignore[arg-type]
        assert run.code == 0, run

    def create(self, *, compacted: bool = False) -> None:
        """The table with two deltas registered in place (the first one compacted, if asked)."""
        from compactor import create_table
        from compactor.cli.params import parse_schema
        from compactor.compaction import compact_partition

        table = create_table(self.url, parse_schema(SCHEMA), primary_key=["id"],
                             ordering_column="lsn", bucket_count=2,
                             partition_by=["day"] if self.partitioned else [])
        part = table.partition({"day": "d1"} if self.partitioned else None)
        part.register([write_parquet(self.root / "in" / "first.parquet",
                                     upserts(list(range(50)), "a", 0))])
        if compacted:
            compact_partition(table, part, backend="local")
        part.register([write_parquet(self.root / "in" / "second.parquet",
                                     upserts(list(range(25, 75)), "b", 100))])


def _append(data: bytes, *extra: str) -> Callable[[Workspace], Case]:
    def case(ws: Workspace) -> Case:
        path = ws.file("bad.parquet", data)
        return Case(["append", ws.url, *ws.part, "--kind", "upsert", *extra, path], [path])
    return case


def _changed_after_registration(ws: Workspace) -> Case:
    path = ws.file("late.parquet", GOOD)
    ws.run("append", ws.url, *ws.part, "--kind", "upsert", path)
    pq.write_table(pa.table(upserts([1, 2, 3], "rewritten", 900)), path)
    return Case(["compact", ws.url, *ws.part, "--backend", "local"], [path, "changed"])


def _deleted_after_registration(ws: Workspace) -> Case:
    path = ws.file("late.parquet", GOOD)
    ws.run("append", ws.url, *ws.part, "--kind", "upsert", path)
    os.remove(path)
    return Case(["compact", ws.url, *ws.part, "--backend", "local"], [path, "does not exist"])


def _partition_escaping_upward(ws: Workspace) -> Case:
    return Case(["compact", ws.url, "-p", "day=../../../outside", "--backend", "local"],
                ["day=..%2F..%2F..%2Foutside", "has no commits"])


def _partition_with_slash(ws: Workspace) -> Case:
    return Case(["history", ws.url, "-p", "day=d1/../../x"], ["day=d1%2F..%2F..%2Fx",
                                                               "has no commits"])


def _huge_partition_value(ws: Workspace) -> Case:
    path = ws.file("good.parquet", GOOD)
    return Case(["append", ws.url, "-p", "day=" + "x" * 100_000, "--kind", "upsert", path],
                ["column 'day'", "bytes once escaped; at most 255"])


def _not_a_table(ws: Workspace) -> Case:
    other = ws.root / "not-a-table"
    other.mkdir()
    (other / "data.parquet").write_bytes(GOOD)
    (other / "_table").write_text("a file where the metadata directory should be")
    return Case(["compact", str(other), "--backend", "local"], [str(other), "no table"])


def _corrupt_metadata(ws: Workspace) -> Case:
    other = ws.root / "broken"
    (other / "_table" / "metadata").mkdir(parents=True)
    (other / "_table" / "metadata" / "00000001.json").write_text('{"format": 1, "version": ')
    return Case(["show", str(other)], ["00000001.json", "not valid table metadata"])


def _corrupt_commit(ws: Workspace) -> Case:
    log = Path(ws.url) / "partitions" / "default" / "_log"
    bad = log / "00000000000000000004.json"
    bad.write_text("\x00\x01 not json at all")
    return Case(["compact", ws.url, "--backend", "local"], [str(bad), "not a valid commit file"])


def _malformed_job_config(ws: Workspace) -> Case:
    path = ws.root / "jobs.yaml"
    path.write_text(f"jobs:\n  - name: orders\n    table: {ws.url}\n    triggers:\n"
                    "      pending_deltas: many\n")
    return Case(["jobs", "validate", str(path)],
                [f"{path}:5", "jobs[0].triggers.pending_deltas"])


def _job_config_not_yaml(ws: Workspace) -> Case:
    path = ws.root / "jobs.yaml"
    path.write_text("jobs: [\n  {name: orders, table: ")
    return Case(["jobs", "validate", str(path)], [str(path)])


def _unreachable_endpoint(ws: Workspace) -> Case:
    return Case(["show", "s3://bucket/table", "--endpoint-url", "http://127.0.0.1:9"],
                ["s3://bucket/table", "Could not connect to the endpoint URL"],
                env={"AWS_MAX_ATTEMPTS": "2"})


KINDS: dict[str, Callable[[Workspace], Case]] = {
    "truncated parquet": _append(GOOD[: len(GOOD) // 2]),
    "corrupt parquet": _append(b"PAR1" + os.urandom(2000) + b"PAR1"),
    "wrong magic bytes": _append(GOOD[:-4] + b"PAR2"),
    "empty file": _append(b""),
    "zero-row delta": _append(_parquet(pa.table(upserts([], "x", 0),
                                                schema=pa.schema([("id", pa.int64()),
                                                                  ("v", pa.string()),
                                                                  ("lsn", pa.int64())])))),
    "schema conflict": _append(_parquet({"id": [1], "v": [1.5], "lsn": [1]})),
    "null key": _append(_parquet({"id": [1, None, 3], "v": ["a", "b", "c"], "lsn": [1, 2, 3]})),
    "missing key column": _append(_parquet({"v": ["a"], "lsn": [1]})),
    "unknown cdc op": _append(_parquet({"id": [1, 2], "v": ["a", "b"], "lsn": [1, 2],
                                        "Op": ["I", "X"]}), "--kind", "cdc"),
    "registered file changed": _changed_after_registration,
    "registered file deleted": _deleted_after_registration,
    "partition value with ../": _partition_escaping_upward,
    "partition value with /": _partition_with_slash,
    "huge partition value": _huge_partition_value,
    "not a table": _not_a_table,
    "corrupt table metadata": _corrupt_metadata,
    "corrupt commit file": _corrupt_commit,
    "malformed job config": _malformed_job_config,
    "job config that is not YAML": _job_config_not_yaml,
    "unreachable endpoint": _unreachable_endpoint,
}
COMPACTED = {"corrupt commit file", "registered file changed"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime in ns)."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            stat = path.stat()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input_is_one_line_a_failure_and_changes_nothing(kind, tmp_path, figures):
    ws = Workspace(tmp_path)
    make = KINDS[kind]
    ws.partitioned = make in (_partition_escaping_upward, _partition_with_slash,
                              _huge_partition_value)
    ws.create(compacted=kind in COMPACTED)
    case = make(ws)
    table_before = _tree(Path(ws.url))
    around_before = _tree(tmp_path)  # beside the table: nothing may land outside it either

    run = compactor(*case.args, env=case.env, timeout=120)

    assert run.code == case.code, run
    lines = run.err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], run
    assert "Traceback" not in run.err, run
    for mention in case.mentions:
        assert mention in errors[0], f"{mention!r} not in {errors[0]!r}"
    assert _tree(Path(ws.url)) == table_before, "the table changed"
    around_after = _tree(tmp_path)
    assert around_after == around_before, sorted(set(around_after) ^ set(around_before))
    figures.trials["bad input kinds"] += 1


def test_huge_strings_in_data_are_compacted_not_refused(tmp_path, figures):
    """Abuse that is not an error: keys and values of megabytes compact correctly."""
    ws = Workspace(tmp_path)
    ws.create()
    big = [f"{i}-" + "k" * 1_000_000 for i in range(3)]
    data = pa.table({"id": [7, 8, 7], "v": big, "lsn": [1000, 1001, 1002]})
    ws.run("append", ws.url, "--kind", "upsert", write_parquet(tmp_path / "big.parquet", data))
    ws.run("compact", ws.url, "--backend", "local")
    out = tmp_path / "out"
    ws.run("read", ws.url, "--to", str(out))
    rows = {r["id"]: r["v"] for r in pq.read_table(out).to_pylist()}
    assert rows[7] == big[2] and rows[8] == big[1] and len(rows) == 75
    verified = compactor("verify", ws.url)
    assert verified.code == 0, verified
    figures.rows_verified += len(rows)


def test_wrong_credentials_are_one_line_and_change_nothing(s3_bucket, s3_server, figures,
                                                           monkeypatch):
    import boto3
    import fsspec
    import moto.settings

    url = f"s3://{s3_bucket}/table"
    created = compactor("table", "create", url, "-k", "id", "--schema", SCHEMA)
    assert created.code == 0, created
    fs = fsspec.filesystem("s3", endpoint_url=s3_server, skip_instance_cache=True)
    before = fs.find(url, detail=True)
    iam = boto3.client("iam", endpoint_url=s3_server)
    iam.create_user(UserName=f"u-{s3_bucket}")
    key_id = iam.create_access_key(UserName=f"u-{s3_bucket}")["AccessKey"]["AccessKeyId"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # check signatures
    unknown_key = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1",
                   "AWS_SECRET_ACCESS_KEY": "wrong-secret-1", "AWS_SESSION_TOKEN": ""}
    wrong_secret = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": "wrong-secret-2",
                    "AWS_SESSION_TOKEN": ""}
    runs = [(compactor("show", url, env=unknown_key), "Access Key Id you provided does not"),
            (compactor("append", url, "--kind", "upsert", f"{url}/x.parquet", env=unknown_key),
             "Access Key Id you provided does not"),
            (compactor("show", url, "--debug", env=wrong_secret), "signature we calculated"),
            (compactor("compact", url, "--json", env=wrong_secret), "signature we calculated")]
    monkeypatch.undo()
    for run, complaint in runs:
        assert run.code == 1, run
        line = run.err.splitlines()[-1]
        assert line.startswith("error: ") and url in line and complaint in line, run
        if "--debug" not in run.args:
            assert len(run.err.splitlines()) == 1, run
        for secret in ("wrong-secret-1", "wrong-secret-2", key_id, "AKIAWRONGWRONGWRONG1"):
            assert secret not in run.err + run.out, f"{secret} in {run}"
    assert fs.find(url, detail=True) == before
    figures.trials["bad input kinds"] += 2


def test_interrupted_cli_is_one_line_and_changes_nothing(tmp_path):
    """Ctrl-C (SIGINT) during a round: a non-zero exit, no traceback, nothing committed."""
    ws = Workspace(tmp_path)
    ws.create()
    before = _tree(Path(ws.url) / "partitions" / "default" / "_log")
    process = subprocess.Popen([str(EXECUTABLE), "compact", ws.url, "--backend", "local"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "hash_bucket" in line:
            process.send_signal(2)
            break
    err = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 130 and err.splitlines()[-1].startswith("interrupted"), err
    assert "Traceback" not in err, err
    assert _tree(Path(ws.url) / "partitions" / "default" / "_log") == before
