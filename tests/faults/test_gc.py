"""``compactor gc``: unreferenced files past the grace period go; nothing any version needs does.

The rule (``compactor.gc``): a file is live if any commit in its partition's log references it;
only the table's own data, compacted, index and temporary files that no commit references and
that are older than the grace period are removed. Every version stays readable.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compactor import CorruptFile, create_table, open_table
from compactor.compaction import compact_partition
from compactor.gc import collect_garbage
from compactor.reader import read_partition
from tests.cli.conftest import compactor
from tests.compactor.test_compaction import SCHEMA
from tests.faults.trials import Stream

HOUR = 3600.0


def _referenced(stream: Stream) -> set[str]:
    """Filesystem paths every commit of the stream's partition references (computed here,
    independently of compactor.gc)."""
    storage = stream.table.storage
    paths = set()
    for entry in stream.part.log.read_from(1):
        if entry["kind"] == "delta":
            paths |= {storage.strip(f["url"]) for f in entry["delta"]["files"]}
        else:
            state = entry["compaction"]
            paths |= {storage.strip(f["url"]) for b in state["buckets"] for f in b}
            for chain in json.loads(state["properties"].get("index", "[]")):
                paths |= {storage.path(rel) for rel in chain}
    return {str(p) for p in paths}


def _age(path: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _plant(directory: Path, name: str, *, age: float) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"not referenced by anything")
    _age(str(path), age)
    return str(path)


def _versions_readable(stream: Stream) -> int:
    """Read every compacted version of the partition (each file is verified); returns how
    many there are."""
    states = [n for n, e in enumerate(stream.part.log.read_from(1), 1) if e["kind"] ==
              "compaction"]
    for n in states:
        read_partition(stream.table, stream.part, version=n)
    return len(states)


def test_only_old_unreferenced_files_of_the_table_are_removed(rt, tmp_path, figures):
    stream = Stream.new(f"file://{tmp_path}/t", figures, buckets=4)
    table = stream.table
    rng = random.Random(1)
    for _ in range(3):  # three compacted versions; later rounds reference files in place
        stream.random_deltas(rng, 2, 3_000, 4_000)
        compact_partition(table, stream.part, target_file_size=20_000)
    part_dir = Path(table.storage.path(stream.part.key.dir))
    live = _referenced(stream)
    # Ten hours later (as gc sees it): every live file is far older than the grace period.
    # (Live files cannot be aged on disk: that would change their fingerprints.)
    later = time.time() + 10 * HOUR
    hex_name = lambda: uuid.uuid4().hex  # noqa: E731
    old_orphans = [
        _plant(part_dir / "data", f"{hex_name()}.parquet", age=2 * HOUR),
        _plant(part_dir / "compacted" / "b00001", f"{hex_name()}.parquet", age=2 * HOUR),
        _plant(part_dir / "index" / "b00002", f"delta-{hex_name()}.parquet", age=2 * HOUR),
        _plant(part_dir / "_log", f".00000000000000000099.json.{hex_name()}.tmp", age=2 * HOUR),
        _plant(tmp_path / "t" / "_table" / "metadata", f".00000002.json.{hex_name()}.tmp",
               age=2 * HOUR),
    ]
    young_orphan = _plant(part_dir / "compacted" / "b00000", f"{hex_name()}.parquet",
                          age=-10 * HOUR + 60)  # a minute old, ten hours from now
    not_ours = [  # old and unreferenced, but not named or placed the way the table writes
        _plant(part_dir / "data", "export-0001.parquet", age=2 * HOUR),
        _plant(part_dir / "compacted" / "b00001", f"{hex_name()}.parquet.bak", age=2 * HOUR),
        _plant(part_dir / "elsewhere", f"{hex_name()}.parquet", age=2 * HOUR),
        _plant(tmp_path / "t", f"{hex_name()}.parquet", age=2 * HOUR),
        _plant(tmp_path / "t" / "_leases", f".x.{hex_name()}.tmp", age=2 * HOUR),
        _plant(tmp_path, f"{hex_name()}.parquet", age=2 * HOUR),  # outside the root
    ]
    everything = live | set(old_orphans) | {young_orphan} | set(not_ours)

    dry = collect_garbage(table, dry_run=True, now=later)
    assert sorted(dry.removed) == sorted(f"file://{p}" for p in old_orphans)
    assert all(os.path.exists(p) for p in everything)
    assert dry.removed_by_kind == {"data": 1, "compacted": 1, "index": 1, "temporary": 2}

    swept = collect_garbage(table, now=later)  # default grace period: one hour
    assert sorted(swept.removed) == sorted(dry.removed)
    assert swept.referenced == len(live) and swept.young == 1
    assert not any(os.path.exists(p) for p in old_orphans)
    assert all(os.path.exists(p) for p in live | {young_orphan} | set(not_ours))
    assert _versions_readable(stream) == 3  # every version, not only the newest
    stream.check()

    assert collect_garbage(table, older_than=0, now=later).removed == (
        f"file://{young_orphan}",)  # past the grace period, it goes too
    figures.trials["gc"] += 1


def test_a_gap_in_the_log_stops_gc_before_it_removes_anything(tmp_path):
    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"])
    part = table.partition()
    for i in range(3):
        part.append(pa.table({"id": [i], "v": ["x"], "lsn": [i]}, schema=SCHEMA))
    orphan = _plant(Path(table.storage.path(part.key.dir)) / "data", f"{uuid.uuid4().hex}"
                    ".parquet", age=2 * HOUR)
    os.remove(table.storage.path(f"{part.key.dir}/_log/00000000000000000002.json"))
    with pytest.raises(CorruptFile, match="commit 2 is missing but commit 3 exists"):
        collect_garbage(table)
    assert os.path.exists(orphan)


GRACE = 3.0  # seconds: well above a round or an append of this size, even on a busy machine


def test_gc_while_rounds_and_appends_run(rt, tmp_path, fault_seed, figures):
    """A writer appends and rounds compact while gc runs over and over with a grace period of
    a few seconds, so that the files of earlier rounds, superseded or not, and of committed
    appends are old when gc looks at them; orphans are planted as it goes. gc must remove
    every planted orphan and nothing any version references."""
    stream = Stream.new(f"file://{tmp_path}/t", figures, buckets=4)
    table = stream.table
    part_dir = Path(table.storage.path(stream.part.key.dir))
    rng = random.Random(fault_seed)
    stream.random_deltas(rng, 1, 2_000, 5_000)
    compact_partition(table, stream.part, target_file_size=20_000)  # workers warm
    stop = threading.Event()
    errors: list[BaseException] = []
    planted: list[str] = []
    removed: set[str] = set()
    longest: list[float] = [0.0]

    def writer() -> None:
        gen = random.Random(fault_seed + 1)
        try:
            while not stop.is_set():
                start = time.monotonic()
                stream.random_deltas(gen, 1, 800, 5_000)
                longest[0] = max(longest[0], time.monotonic() - start)
                time.sleep(0.02)
        except BaseException as e:
            errors.append(e)

    def collector() -> None:
        try:
            while not stop.is_set():
                where = rng.choice(["data", "compacted/b00003", "index/b00001"])
                prefix = "base-" if where.startswith("index") else ""
                planted.append(_plant(part_dir / where, f"{prefix}{uuid.uuid4().hex}.parquet",
                                      age=2 * GRACE))
                removed.update(collect_garbage(table, older_than=GRACE).removed)
                time.sleep(0.05)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=collector)]
    for t in threads:
        t.start()
    rounds = 0
    try:
        deadline = time.monotonic() + 2.5 * GRACE
        while time.monotonic() < deadline or rounds < 6:
            start = time.monotonic()
            committed = compact_partition(table, stream.part, target_file_size=20_000).committed
            longest[0] = max(longest[0], time.monotonic() - start)
            rounds += committed  # nothing pending if the writer has not appended since
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert longest[0] < GRACE, f"a round or append took {longest[0]:.1f} s, beyond the grace"
    removed.update(collect_garbage(table, older_than=GRACE).removed)
    assert not any(os.path.exists(p) for p in planted), "a planted orphan survived"
    assert removed == {f"file://{p}" for p in planted}, "gc removed files it did not plant"
    live = _referenced(stream)
    assert all(os.path.exists(p) for p in live)
    # gc did face live files past the grace period (superseded ones among them) and kept them
    assert sum(time.time() - os.stat(p).st_mtime > GRACE for p in live) > 10
    assert _versions_readable(stream) == rounds + 1
    compact_partition(table, stream.part, target_file_size=20_000)
    stream.check()
    figures.trials["gc while rounds and appends run"] += 1


def test_gc_command(tmp_path):
    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"])
    part = table.partition()
    part.append(pa.table({"id": [1], "v": ["x"], "lsn": [1]}, schema=SCHEMA))
    orphan = _plant(Path(table.storage.path(part.key.dir)) / "data",
                    f"{uuid.uuid4().hex}.parquet", age=3 * HOUR)
    pq.write_table(pa.table({"id": [1]}), orphan)
    _age(orphan, 3 * HOUR)

    dry = compactor("gc", tmp_path / "t", "--older-than", "2h", "--dry-run", "--json")
    assert dry.code == 0, dry
    assert dry.json()["removed"] == [f"file://{orphan}"] and dry.json()["dry_run"]
    assert os.path.exists(orphan)
    kept = compactor("gc", tmp_path / "t", "--older-than", "4h")
    assert kept.code == 0 and "removed 0 unreferenced" in kept.out, kept
    done = compactor("gc", tmp_path / "t", "--older-than", "90m")
    assert done.code == 0 and orphan in done.out and not os.path.exists(orphan), done
    bad = compactor("gc", tmp_path / "t", "--older-than", "soon")
    assert bad.code == 2 and "'soon' is not a duration" in bad.err, bad


def test_a_table_reached_by_other_paths_keeps_every_referenced_file(rt, tmp_path, monkeypatch):
    """Writers that reached the table through a symlink, or by a relative path from inside
    one (the working directory resolves it to the real path), name its files by those paths
    in their commits; gc through yet another path must see them as the same files (it
    removed them: a helper's finding)."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    create_table(f"file://{link}/t", SCHEMA, primary_key=["id"], ordering_column="lsn")
    rows = pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"], "lsn": [1, 2, 3]}, schema=SCHEMA)
    via_link = open_table(f"file://{link}/t")
    via_link.partition().append(rows)
    monkeypatch.chdir(link)  # "./t" from inside the link: the real path
    relative = open_table("t")
    relative.partition().append(rows.set_column(1, "v", pa.array(["x", "y", "z"])))
    compact_partition(relative, relative.partition())
    expected = read_partition(via_link, via_link.partition())
    for path in (real / "t", link / "t"):  # (no grace period: every file is old enough)
        result = collect_garbage(open_table(f"file://{path}"), older_than=0)
        assert result.removed == () and result.referenced == result.files, (path, result)
    assert read_partition(via_link, via_link.partition()).equals(expected)
    assert expected.column("v").to_pylist() == ["x", "y", "z"]


def test_a_file_registered_through_a_symlink_and_dot_dot_is_kept(tmp_path: Path) -> None:
    """``lnk/../t`` is where the link points's parent, not ``t`` beside the link: the operating
    system resolves the link before the "..", and so must gc (the review found it removing
    such a file)."""
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(real / "sub", target_is_directory=True)
    table = create_table(f"file://{real}/t", SCHEMA, primary_key=["id"], ordering_column="lsn")
    part = table.partition()
    part.append(pa.table({"id": [1], "v": ["a"], "lsn": [1]}, schema=SCHEMA))
    name = f"{uuid.uuid4().hex}.parquet"
    data = real / "t" / "partitions" / "default" / "data"
    pq.write_table(pa.table({"id": [2], "v": ["b"], "lsn": [2]}, schema=SCHEMA), data / name)
    part.register([f"file://{tmp_path}/lnk/../t/partitions/default/data/{name}"])
    result = collect_garbage(table, older_than=0, dry_run=True)
    assert result.removed == () and result.referenced == result.files == 2, result


def test_files_named_through_a_removed_symlink_stop_gc(tmp_path: Path) -> None:
    """Commits name files by the path their writer took; once that path no longer resolves,
    the files listed under the real path look unreferenced: gc removes nothing (it removed
    them, and restoring the link could no longer have made the table readable)."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    table = create_table(f"file://{link}/t", SCHEMA, primary_key=["id"], ordering_column="lsn")
    table.partition().append(pa.table({"id": [1], "v": ["a"], "lsn": [1]}, schema=SCHEMA))
    link.unlink()
    files = sorted((real / "t").rglob("*.parquet"))
    with pytest.raises(CorruptFile, match=r"commits name 1 file.* that do not exist at the path "
                                          r"they name, first .*/link/t/partitions/default/data/"):
        collect_garbage(open_table(f"file://{real}/t"), older_than=0)
    assert sorted((real / "t").rglob("*.parquet")) == files and files
    link.symlink_to(real, target_is_directory=True)  # the path back: readable, as it was
    assert read_partition(table, table.partition()).num_rows == 0  # (not compacted yet)
    assert collect_garbage(open_table(f"file://{real}/t"), older_than=0).removed == ()
