"""Storage benchmark: how fast a partition with a long commit log opens.

Builds a table whose one partition has ``--commits`` delta commits (each registering the same
small Parquet file in place, through the public API), then times opening it cold: a fresh
``open_table(url).partition().snapshot()``, which reads the newest checkpoint and replays the
commits after it. For comparison it also times the same open with the checkpoints removed (a full
replay of every commit file), and one append at the head of the long log.

    .venv/bin/python benchmarks/storage_bench.py                      # file://, 10,000 commits
    .venv/bin/python benchmarks/storage_bench.py --backend s3         # a local S3 API server

``--backend s3`` starts moto's S3 server on 127.0.0.1 (in a child process, so its heap does not
slow this one) and copies the table built on local disk to it (building 10,000 commits through a
Python S3 emulator would dominate the run). moto is an emulator: its figures show the request
pattern's cost, not a real S3 latency.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from compactor import create_table, open_table
from compactor.layout import checkpoint_dir


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def build(url: str, commits: int, interval: int, compact_every: int) -> float:
    table = create_table(url, pa.schema([("id", pa.int64()), ("v", pa.string())]),
                         primary_key=["id"], checkpoint_interval=interval)
    fs, path = fsspec.core.url_to_fs(url)
    export = f"{path}-exports/rows.parquet"
    fs.makedirs(os.path.dirname(export), exist_ok=True)
    with fs.open(export, "wb") as f:
        pq.write_table(pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"]}), f)
    part = table.partition()
    start = time.perf_counter()
    for n in range(1, commits + 1):
        if compact_every and n % compact_every == 0:
            # stands in for a compaction round: folds every delta so far into a (here empty)
            # compacted state, as a real round's commit would
            base = part.snapshot()
            part.commit_compaction(base, high_watermark=base.version, buckets=[[]])
        else:
            part.register([fs.unstrip_protocol(export)])
    return time.perf_counter() - start


def _serve_s3(ready: Any) -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    ready.put(server.get_host_and_port())
    threading.Event().wait()


def start_s3() -> tuple[Any, str]:
    """moto's S3 server in a child process (so its heap does not slow this one's GC)."""
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=_serve_s3, args=(ready,), daemon=True)
    server.start()
    host, port = ready.get(timeout=120)
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return server, "s3://bench/t"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["file", "memory", "s3"], default="file")
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--interval", type=int, default=100, help="checkpoint interval")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compact-every", type=int, default=0, metavar="N",
                        help="make every Nth commit a compaction (default: none, so every "
                             "delta stays pending and the snapshot holds all of them)")
    parser.add_argument("--no-full-replay", action="store_true",
                        help="skip timing the open without checkpoints")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        build_url = f"memory://bench-{os.getpid()}/t" if args.backend == "memory" \
            else f"file://{tmp}/t"
        build_s = build(build_url, args.commits, args.interval, args.compact_every)
        print(f"built {args.commits} commits in {build_s:.1f} s "
              f"({args.commits / build_s:.0f} commits/s through the public API on "
              f"{build_url.split(':')[0]}://)")
        url, server = build_url, None
        if args.backend == "s3":
            server, url = start_s3()
            start = time.perf_counter()
            s3 = fsspec.filesystem("s3")
            s3.put(f"{tmp}/t/", "bench/t/", recursive=True)
            print(f"copied the table to the S3 server in {time.perf_counter() - start:.1f} s")
        try:
            def cold_open() -> int:
                return open_table(url).partition().snapshot().version

            seconds, version = timed(cold_open, args.repeat)
            assert version == args.commits, version
            table = open_table(url)
            checkpoints = table.partition().log.checkpoints()
            pending = len(table.partition().snapshot().deltas)
            print(f"open partition with {version} commits on {args.backend}:// (checkpoint "
                  f"every {args.interval}, newest at {checkpoints[-1] if checkpoints else None}"
                  f", {pending} pending deltas): {seconds * 1000:.1f} ms median of "
                  f"{args.repeat}")

            part = table.partition()
            seconds, _ = timed(lambda: part.append(pa.table({"id": [7], "v": ["x"]})), 1)
            print(f"append at the head of the log (fresh handle): {seconds * 1000:.1f} ms")

            if not args.no_full_replay:
                storage = table.storage
                storage.fs.rm(storage.path(checkpoint_dir(part.key)), recursive=True)
                seconds, version = timed(cold_open, 1)
                print(f"same open without checkpoints (replays {version} commit files): "
                      f"{seconds * 1000:.1f} ms")
        finally:
            if server is not None:
                server.terminate()
                server.join()
            if args.backend == "memory":
                fsspec.filesystem("memory").rm(f"/bench-{os.getpid()}", recursive=True)


if __name__ == "__main__":
    main()
