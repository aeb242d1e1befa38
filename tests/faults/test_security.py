"""Security: writes stay under the table root, partition values are escaped, secrets never leak,
YAML is loaded safely, and nothing read from table storage is ever unpickled.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import os
import pickle
import secrets
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import runtime
from compactor import CompactorError, OutsideTableRoot, create_table, open_table
from compactor.compaction import compact_partition
from compactor.fs import Storage
from compactor.gc import collect_garbage
from compactor.reader import read_partition
from tests.cli.conftest import compactor, upserts, write_parquet
from tests.compactor.test_compaction import SCHEMA

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("compactor", "jobs", "runtime", "infra", "benchmarks")


def _files_under(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    found = {}
    for directory, _, names in os.walk(root):
        if any(Path(directory).is_relative_to(s) for s in skip):
            continue
        for name in names:
            stat = (Path(directory) / name).stat()
            found[os.path.join(directory, name)] = (stat.st_size, stat.st_mtime_ns)
    return found


# -- no write outside the table root --------------------------------------------------------------
@pytest.mark.parametrize("rel", ["../x", "../../etc/passwd", "/etc/passwd", "a/../../x",
                                 "a/./b", "a//b", ".", "..", "a\\..\\..\\x", "a/b/.."])
def test_storage_refuses_paths_that_are_not_plainly_under_the_root(tmp_path, rel):
    storage = Storage(f"file://{tmp_path}/root")
    with pytest.raises(OutsideTableRoot):
        storage.create(rel, b"x")
    with pytest.raises(OutsideTableRoot):
        storage.open_output(rel)
    assert _files_under(tmp_path) == {}


HOSTILE_VALUES = ["../../evil", "..", ".", "a/b", "/etc", "%2F..%2F", "x/../../../../evil",
                  "a\\..\\b", "day=x", "=", "", " ", "é/ü", "\x00nul", "\n", "%", "~", "*"]


def test_partition_values_are_escaped_into_one_directory_each(rt, tmp_path, figures):
    table = create_table(f"file://{tmp_path}/root/t", SCHEMA, primary_key=["id"],
                         partition_by=["day", "region"], bucket_count=2)
    sandbox = _files_under(tmp_path)
    for i, value in enumerate(HOSTILE_VALUES):
        part = table.partition({"day": value, "region": HOSTILE_VALUES[-1 - i]})
        part.append(pa.table({"id": [i], "v": [value], "lsn": [i]}, schema=SCHEMA))
        if value in ("../../evil", "..", "a/b", "x/../../../../evil"):  # files of every kind
            compact_partition(table, part, target_file_size=20_000)
    root = tmp_path / "root" / "t"
    written = set(_files_under(tmp_path)) - set(sandbox)
    assert written and all(Path(p).is_relative_to(root) for p in written)
    for path in written:  # two escaped components, each with its '=', then the table's own
        rel = Path(path).relative_to(root / "partitions").parts
        assert rel[0].startswith("day=") and rel[1].startswith("region=")
        assert all(part not in (".", "..") for part in rel)
    listed = {(p.values["day"], p.values["region"]) for p in table.partitions()}
    assert listed == {(v, HOSTILE_VALUES[-1 - i]) for i, v in enumerate(HOSTILE_VALUES)}
    for i, value in enumerate(HOSTILE_VALUES):
        part = table.partition({"day": value, "region": HOSTILE_VALUES[-1 - i]})
        [delta] = part.deltas()
        assert table.storage.strip(delta.files[0].url).startswith(  # type: ignore[union-attr]
            table.storage.path(part.key.dir) + "/")
        if part.snapshot().compacted is not None:
            rows = read_partition(table, part)
            assert rows.to_pylist() == [{"id": i, "v": value, "lsn": i}]
    figures.rows_verified += len(HOSTILE_VALUES)


def test_a_whole_workflow_writes_only_under_the_table_root(tmp_path):
    """Every command, successful or not, on a table in a sandbox: apart from the table root
    and the export destination, no file in the sandbox (inputs included) is created or
    changed."""
    sandbox = tmp_path / "sandbox"
    table, export = sandbox / "lake" / "t", sandbox / "export"
    first = write_parquet(sandbox / "in" / "a.parquet", upserts(list(range(40)), "a", 0))
    second = write_parquet(sandbox / "in" / "b.parquet", upserts(list(range(20, 60)), "b", 100))
    (sandbox / "in" / "corrupt.parquet").write_bytes(b"PAR1 nope PAR1")
    before = _files_under(sandbox)
    steps = [
        ("table", "create", table, "-k", "id", "--order-by", "lsn", "--partition-by", "day",
         "--schema-from", first),
        ("append", table, "-p", "day=../../../in", "--kind", "upsert", first),
        ("append", table, "-p", "day=a/b", "--kind", "upsert", "--copy", second),
        ("append", table, "-p", "day=a/b", "--kind", "upsert", sandbox / "in" /
         "corrupt.parquet"),
        ("compact", table, "-p", "day=../../../in", "--backend", "local"),
        ("compact", table, "-p", "day=a/b", "--backend", "local"),
        ("verify", table, "-p", "day=a/b"),
        ("show", table, "--files"),
        ("history", table, "-p", "day=../../../in"),
        ("read", table, "-p", "day=a/b", "--to", export),
        ("gc", table, "--older-than", "0"),
    ]
    codes = [compactor(*step).code for step in steps]
    assert codes == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    after = _files_under(sandbox, skip=(table, export))
    assert after == before


# -- secrets never in logs, errors, metrics or storage -----------------------------------------
def _fake_credentials() -> dict[str, str]:
    tag = secrets.token_hex(6).upper()
    return {"AWS_ACCESS_KEY_ID": f"AKIAFAKE{tag}",
            "AWS_SECRET_ACCESS_KEY": f"FakeSecret/{tag}+{secrets.token_hex(8)}",
            "AWS_SESSION_TOKEN": f"FakeToken{tag}{secrets.token_hex(16)}"}


SIGNED_URL_MARKERS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token",
                      "Signature=", "AWSAccessKeyId", "Authorization")


def _leaks(text: str, credentials: dict[str, str]) -> list[str]:
    found = [name for name, value in credentials.items() if value in text]
    found += [marker for marker in SIGNED_URL_MARKERS if marker in text]
    return found


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        ours = record.name.split(".")[0] in ("compactor", "runtime", "jobs")
        if ours or record.levelno >= logging.INFO:  # third-party debug output is not ours
            self.lines.append(self.format(record))


@pytest.fixture
def captured_logs() -> Iterator[_Records]:
    handler = _Records()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(exc_text)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_credentials_never_appear_in_output_errors_logs_or_storage(s3_bucket, s3_server,
                                                                    tmp_path, captured_logs,
                                                                    monkeypatch, figures):
    credentials = _fake_credentials()
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)  # the CLI subprocesses and in-process runtime see them
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the unreachable endpoint below fails sooner
    url = f"s3://{s3_bucket}/lake/t"
    export = write_parquet(f"s3://{s3_bucket}/exports/a.parquet", upserts(list(range(30)), "a", 0))
    local = write_parquet(tmp_path / "b.parquet", upserts(list(range(10, 40)), "b", 100))
    outputs: list[str] = []
    codes: list[int] = []

    def run_all(*commands: tuple[object, ...]) -> None:  # independent: side by side
        with ThreadPoolExecutor(4) as pool:
            for result in pool.map(lambda c: compactor(*c), commands):
                outputs.extend([result.out, result.err])
                codes.append(result.code)

    run_all(("table", "create", url, "-k", "id", "--order-by", "lsn", "--schema-from", export))
    run_all(("append", url, "--kind", "upsert", export, "--json"))
    run_all(("append", url, "--kind", "upsert", "--copy", local))
    run_all(("compact", url, "--backend", "local", "--json"))
    run_all(("show", url, "--files", "--json"), ("verify", url),
            ("read", url, "--to", f"s3://{s3_bucket}/out/"), ("gc", url, "--dry-run"),
            # failures, with and without tracebacks
            ("append", url, "--kind", "upsert", f"s3://{s3_bucket}/exports/missing.parquet"),
            ("show", f"s3://{s3_bucket}/nothing-here", "--debug"),
            ("compact", url, "--endpoint-url", "http://127.0.0.1:9", "--debug", "--json"))
    fs = fsspec.filesystem("s3", endpoint_url=s3_server, skip_instance_cache=True)
    fs.pipe_file(export.removeprefix("s3://"), b"changed after registration")
    run_all(("verify", url, "--json"),
            ("read", url, "--to", f"s3://{s3_bucket}/out2/", "--debug"))  # still readable
    assert codes == [0] * 8 + [1] * 4 + [0], list(zip(codes, outputs[1::2], strict=True))

    # in process, with the credentials passed as storage options, on the local runtime
    options = {"key": credentials["AWS_ACCESS_KEY_ID"],
               "secret": credentials["AWS_SECRET_ACCESS_KEY"],
               "token": credentials["AWS_SESSION_TOKEN"], "endpoint_url": s3_server}
    table = create_table(f"s3://{s3_bucket}/lake/t2", SCHEMA, primary_key=["id"],
                         ordering_column="lsn", bucket_count=2, storage_options=options)
    part = table.partition()
    part.append(pa.table({"id": [1, 2], "v": ["x", "y"], "lsn": [1, 2]}, schema=SCHEMA))
    texts = [repr(table), repr(table.storage), repr(part)]
    with runtime.init("local", num_cpus=2):
        result = compact_partition(table, part, target_file_size=20_000)
        texts.append(json.dumps(result.to_dict()))
        texts.append(json.dumps(result.metrics()))
        texts.append(json.dumps(collect_garbage(table, dry_run=True).to_dict()))
        for failing in (lambda: part.register([f"s3://{s3_bucket}/nope.parquet"]),
                        lambda: open_table(f"s3://{s3_bucket}/none", storage_options=options),
                        lambda: part.commit_compaction(part.snapshot(1), high_watermark=1,
                                                       buckets=[[]])):
            with pytest.raises(CompactorError) as error:
                failing()
            texts.append(f"{error.value!r} {error.value}")
    stored = "".join(fs.cat_file(p).decode("latin-1") for p in fs.find(s3_bucket))

    for where, text in (("CLI output", "\n".join(outputs)), ("values", "\n".join(texts)),
                        ("logs", "\n".join(captured_logs.lines)), ("table storage", stored)):
        assert not _leaks(text, credentials), f"{where} leak {_leaks(text, credentials)}"
    assert "Could not connect" in "".join(outputs)  # the failures above did happen
    figures.trials["secret scans"] += 1


def test_credentials_never_appear_in_job_history_or_metrics(tmp_path, s3_bucket, s3_server,
                                                            captured_logs, monkeypatch):
    from prometheus_client import generate_latest

    from jobs.config import parse_config
    from jobs.scheduler import Scheduler

    credentials = _fake_credentials()
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3_bucket}/lake/jobs"
    options = {"key": credentials["AWS_ACCESS_KEY_ID"],
               "secret": credentials["AWS_SECRET_ACCESS_KEY"], "endpoint_url": s3_server}
    table = create_table(url, SCHEMA, primary_key=["id"], ordering_column="lsn",
                         partition_by=["day"], bucket_count=2, storage_options=options)
    for day in ("d1", "d2"):
        table.partition({"day": day}).append(
            pa.table({"id": [1, 2], "v": ["x", "y"], "lsn": [1, 2]}, schema=SCHEMA))
    broken = table.partition({"day": "d2"}).snapshot().deltas[0].files[0].url
    fsspec.filesystem("s3", endpoint_url=s3_server, skip_instance_cache=True).rm(broken)
    history = tmp_path / "history.sqlite"
    config = parse_config(textwrap.dedent(f"""
        history: {history}
        jobs:
          - name: leaky
            table: {url}
            storage_options: {json.dumps(options)}
            triggers: {{pending_deltas: 1}}
            retries: {{max: 1, backoff: 0.01s}}
        """), "jobs.yaml")
    with runtime.init("local", num_cpus=2):
        scheduler = Scheduler(config)
        runs = scheduler.run_once()
        metrics = generate_latest(scheduler.metrics.registry).decode()
        scheduler.shutdown()
    assert sorted(r.outcome for r in runs) == ["failed", "succeeded"], runs
    rows = sqlite3.connect(history).execute("SELECT * FROM runs").fetchall()
    validate = compactor("jobs", "validate", tmp_path / "jobs.yaml")  # file does not exist
    (tmp_path / "jobs.yaml").write_text(config.source)
    for where, text in (("history", json.dumps(rows, default=str)), ("metrics", metrics),
                        ("logs", "\n".join(captured_logs.lines)),
                        ("runs", repr(runs)), ("validate", validate.out + validate.err)):
        assert not _leaks(text, credentials), f"{where} leak {_leaks(text, credentials)}"


# -- safe YAML -------------------------------------------------------------------------------------
def _python_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from (REPO / package).rglob("*.py")


def _yaml_loads(path: Path) -> Iterator[tuple[int, str, ast.Call]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "yaml":
            yield node.lineno, node.func.attr, node


def test_yaml_is_only_ever_loaded_safely():
    """Every yaml call in the code: safe_load/safe_load_all/safe_dump/dump, or load with a
    SafeLoader subclass (resolved by importing the module)."""
    checked = 0
    for path in _python_files():
        for line, name, call in _yaml_loads(path):
            where = f"{path.relative_to(REPO)}:{line}"
            assert name not in ("unsafe_load", "unsafe_load_all", "full_load",
                                "full_load_all"), where
            if name in ("load", "load_all"):
                loader = next((k.value for k in call.keywords if k.arg == "Loader"),
                              call.args[1] if len(call.args) > 1 else None)
                assert isinstance(loader, ast.Name | ast.Attribute), f"{where}: no Loader"
                module = ".".join(path.relative_to(REPO).with_suffix("").parts)
                namespace = vars(__import__(module, fromlist=["_"]))
                resolved = eval(compile(ast.Expression(loader), where, "eval"), namespace)
                assert issubclass(resolved, yaml.SafeLoader), f"{where}: {resolved}"
            checked += 1
    assert checked >= 2  # the job config and the cluster config are loaded somewhere


def test_yaml_with_python_tags_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = textwrap.dedent(f"""
        jobs:
          - name: !!python/object/apply:os.mkdir ["{marker}"]
            table: {tmp_path}/t
        """)
    (tmp_path / "jobs.yaml").write_text(evil)
    (tmp_path / "cluster.yaml").write_text(
        f"cluster_name: !!python/object/apply:os.mkdir [\"{marker}\"]\n")
    create_table(str(tmp_path / "t"), SCHEMA, primary_key=["id"])
    for args in (("jobs", "validate", tmp_path / "jobs.yaml"),
                 ("plan", tmp_path / "t", "--cluster", tmp_path / "cluster.yaml")):
        run = compactor(*args)
        assert run.code == 1 and "python/object" in run.err, run
        assert len(run.err.splitlines()) == 1, run
    assert not marker.exists()


# -- nothing from table storage is unpickled ------------------------------------------------------
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve",
                  "joblib", "jsonpickle"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_storage_code_can_unpickle():
    """The table model, the pipeline, gc, the CLI and jobs import no pickle-like module, and
    nothing calls a loader that unpickles (pandas' ``read_pickle``; ``numpy.load`` with
    ``allow_pickle``). Only the runtime's process-to-process serialization imports pickle."""
    for path in _python_files():
        rel = path.relative_to(REPO)
        pickling = _imports(path) & PICKLE_MODULES
        if rel.parts[0] == "runtime":
            assert not pickling or str(rel) == "runtime/local/serialization.py", rel
        else:
            assert not pickling, f"{rel} imports {pickling}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                where = f"{rel}:{node.lineno}"
                assert node.func.attr != "read_pickle", where
                if node.func.attr == "load" and isinstance(node.func.value, ast.Name) and \
                        node.func.value.id in ("np", "numpy"):
                    assert not any(k.arg == "allow_pickle" for k in node.keywords), where


class _Canary:
    """Unpickling this creates a directory: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture
def unpickled(monkeypatch) -> Iterator[list[tuple[str, bytes]]]:
    """Every unpickling in this process: (the calling file, the first bytes of the data)."""
    calls: list[tuple[str, bytes]] = []
    loads, load = pickle.loads, pickle.load

    def caller() -> str:
        frame = sys._getframe(2)
        while frame is not None and ("/multiprocessing/" in frame.f_code.co_filename
                                     or frame.f_code.co_filename.endswith("pickle.py")):
            frame = frame.f_back  # type: ignore[assignment]
        return frame.f_code.co_filename if frame is not None else "?"

    def spy_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((caller(), bytes(memoryview(data)[:64])))
        return loads(data, *args, **kwargs)

    def spy_load(file: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((caller(), b""))
        return load(file, *args, **kwargs)

    monkeypatch.setattr(pickle, "loads", spy_loads)
    monkeypatch.setattr(pickle, "load", spy_load)
    yield calls


def test_pickles_planted_in_table_storage_are_never_unpickled(tmp_path, unpickled, figures):
    """Canary pickles (unpickling one creates a directory) planted everywhere the table reads:
    as a data file, an index file, a commit, a checkpoint, table metadata, a Parquet extension
    type's metadata (pyarrow's old ``arrow.py_extension_type`` pickle hook) and the stored
    Arrow schema. Each is read as what it should be and refused or rebuilt; none runs. In
    this (driver) process, only the runtime's serialization unpickles anything at all."""
    marker = tmp_path / "unpickled"
    canary = pickle.dumps(_Canary(marker))
    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"],
                         ordering_column="lsn", bucket_count=2)
    part = table.partition()
    storage = table.storage
    part.append(pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"], "lsn": [1, 2, 3]},
                         schema=SCHEMA))
    # a Parquet file whose column claims pyarrow's pickled Python extension type
    field = pa.field("v", pa.string(), metadata={
        b"ARROW:extension:name": b"arrow.py_extension_type",
        b"ARROW:extension:metadata": canary})
    tricky = pa.table([pa.array([4, 5]), pa.array(["d", "e"]), pa.array([4, 5])],
                      schema=pa.schema([pa.field("id", pa.int64()), field,
                                        pa.field("lsn", pa.int64())]))
    pq.write_table(tricky, tmp_path / "tricky.parquet")
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(canary)
    with pytest.raises(CompactorError):
        part.register([str(fake)])
    try:
        part.register([f"file://{tmp_path}/tricky.parquet"])
    except CompactorError:
        pass  # refused is as good as read as a string column: neither unpickles
    with runtime.init("local", num_cpus=2):
        compact_partition(table, part, target_file_size=20_000)
    chains = json.loads(part.snapshot().compacted.properties["index"])  # type: ignore
    storage.fs.pipe_file(storage.path(chains[0][0]), canary)  # an index file
    part.append(pa.table({"id": [1], "v": ["z"], "lsn": [9]}, schema=SCHEMA))
    with runtime.init("local", num_cpus=2):  # new actors: they read the index from storage
        assert compact_partition(table, part, target_file_size=20_000).rebased  # rebuilt
        assert read_partition(table, part).num_rows >= 3
    head = part.version()
    for rel in (f"{part.key.dir}/_log/{head + 1:020d}.json",
                f"{part.key.dir}/_checkpoints/{head + 50:020d}.json"):
        storage.create(rel, canary)
        with pytest.raises(CompactorError, match="not a valid"):
            table.partition().snapshot()
        os.remove(storage.path(rel))
    schema_text = base64.b64encode(pa.schema([field]).serialize().to_pybytes()).decode()
    metadata = {**table.metadata.to_dict(), "version": 2, "schema": schema_text}
    storage.create("_table/metadata/00000002.json", json.dumps(metadata).encode())
    try:
        open_table(table.url).schema.field("v")
    except CompactorError:
        pass
    storage.create("_table/metadata/00000003.json", canary)
    with pytest.raises(CompactorError, match="not valid table metadata"):
        open_table(table.url)

    assert not marker.exists(), "a pickle from table storage was unpickled"
    callers = {c for c, _ in unpickled}
    assert all("/runtime/" in c for c in callers), callers
    assert not any(data.startswith(canary[:16]) for _, data in unpickled)
    figures.trials["canary pickles planted"] += 7
