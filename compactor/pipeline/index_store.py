"""Persisted primary-key indexes: per bucket, a chain of Arrow IPC files beside the table.

A bucket's index is a *base* file plus what later rounds changed, oldest first: per round a
*delta* file of the entries of the keys it changed, and before it, if the round rewrote or
renumbered compacted files, a *moves* file saying where their rows went. Reading folds the
chain: a moves file repoints every entry read before it, then per key the newest entry wins
(``OP_ABSENT`` entries mark keys that left the index). An incremental round so writes only the
keys it changed and a bit per row of the files it rewrote, not the entries of every row it
moved (those were 53 MB per 10M-key bucket for a round rewriting 1.6M of its rows; now 0.2 MB),
and a chain is folded back into one base file when it has ``MAX_CHAIN`` rounds or its deltas
are large.

A moves file (``MOVES_SCHEMA``) has a row per file of the bucket the round moved: a kept file
that moved up in the bucket's file list (``survivors`` null: its rows stay, it is renumbered
``first_file``), or a rewritten one: its surviving rows (a bitmap over its ``rows``), in order,
were written from place ``first_slot`` of its materialize task's rows of the bucket on, a new
file every ``rows_per_file`` rows (the task's, ``locators.file_rows``) from ordinal
``first_file``. An entry of a rewritten file's row that did not survive points nowhere after
the move (its key's newer entry is in the delta that follows); a live entry left pointing
nowhere makes the chain unusable (``IndexUnavailable``: the round rebuilds the index from
data). Earlier versions read a moves file as an index that
does not match, so they rebuild too, as do versions that took one ``rows_per_file`` for all
the files of a moves file where its rows differ (tasks of one round cut their files to sizes
of their own).

A compacted state names the chains in ``properties["index"]``: a JSON list, one list of paths
(relative to the table root) per bucket. An untouched bucket keeps its chain from the round
before; files of an abandoned round stay unreferenced, for the garbage collector. Indexes are
Arrow data, never pickles: uncompressed Arrow IPC files (``.arrow``). Parquet's encodings and
LZ4 buy little on random 64-bit digests and cost more than the bytes they save: these files
are written in half the time of LZ4 ones and read back 10x faster. On a local filesystem they
are written around the page cache (``compactor.direct_write``: read back only when an actor
restarts; one actor's 363 MB base file took 0.7-1.1 s of CPU through the cache, 0.1 s so).

Files hold an index's columns (``compactor.merge.index_schema``): ``hi, lo, [order], file,
row`` and ``op``; an index has no ``pos`` (see ``compactor.merge``). Chains written by earlier
versions (``.parquet`` files, ``.arrow`` files with ``pos``, int64 rows and LZ4 buffers) are
still read (``pos`` dropped).
"""

from __future__ import annotations

import json
import posixpath
import uuid
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from compactor.fs import Storage
from compactor.manifest import CompactedState
from compactor.merge import OP_DELETE, OP_UPSERT, _locate
from compactor.pipeline.locators import find_in, stable_order

PROPERTY = "index"
OP_ABSENT = 2  # in delta files only: the key is no longer in the index
MAX_CHAIN = 8  # rounds in a chain (its base and deltas) before it is folded into a new base
KEY = np.dtype([("hi", "<u8"), ("lo", "<u8")])
MOVES_SCHEMA = pa.schema([
    ("ordinal", pa.int32()), ("first_file", pa.int32()), ("first_slot", pa.int64()),
    ("rows", pa.int64()), ("rows_per_file", pa.int64()), ("survivors", pa.binary()),
])


class IndexUnavailable(Exception):
    """The persisted index of a bucket cannot be used; the round rebuilds it from data."""


class IndexCorrupt(IndexUnavailable, ValueError):
    """An index (held or reloaded) does not describe the compacted files: entries at rows a
    file does not have, or not one per row it keeps. The round commits nothing and is run
    again with the index rebuilt from the compacted files."""


def paths_of(state: CompactedState | None) -> list[list[str]] | None:
    if state is None or PROPERTY not in state.properties:
        return None
    chains = json.loads(state.properties[PROPERTY])
    if len(chains) != state.bucket_count or not all(isinstance(c, list) for c in chains):
        return None
    return [[str(p) for p in c] for c in chains]


@dataclass(frozen=True)
class Move:
    """Where the rows of one compacted file of a bucket went in a round (see above)."""

    ordinal: int  # before the round
    first_file: int  # kept: its ordinal after; rewritten: that of the first file written
    first_slot: int = 0  # rewritten: where its first surviving row is among its task's rows
    survivors: np.ndarray | None = None  # rewritten: mask of its rows that survive
    rows_per_file: int = 1  # rewritten: the rows of each file its task wrote of the bucket


def new_path(partition_dir: str, bucket: int, kind: str = "base") -> str:
    """A new file of a bucket's chain: kind ``base``, ``delta`` or ``moves``."""
    return f"{partition_dir}/index/b{bucket:05d}/{kind}-{uuid.uuid4().hex}.arrow"


def is_moves(rel: str) -> bool:
    return posixpath.basename(rel).startswith("moves-")


def rounds(chain: list[str]) -> int:
    """Rounds a chain holds: its base and deltas (moves files go with their deltas)."""
    return sum(not is_moves(rel) for rel in chain)


CHECKSUM = b"compactor.checksum"
_CHECKED_BINARY_ROWS = 1 << 16  # binary columns (a moves file's bitmaps) checked up to this


def _checksum(table: pa.Table) -> bytes:
    """Per column, the wrapping 64-bit sum of its values (fixed-width ones without nulls) or
    the CRC-32 of its bytes (small binary ones), as JSON; other columns are not covered. Any
    one changed value changes its column's figure (a flipped bit adds or takes 2**k): a
    damaged index that still reads as Arrow is found, not used (a digest flipped in a base
    file made a round write a key twice). About 10 ms per 10M values."""
    sums: dict[str, int] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        t = column.type
        if column.null_count:
            continue
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t):
            width = t.bit_width // 8
            if width not in (1, 2, 4, 8):
                continue
            total = 0
            for chunk in column.chunks:
                values = chunk.view(pa.int64() if width == 8 else pa.int32() if width == 4
                                    else pa.int16() if width == 2 else pa.int8()).to_numpy()
                total += int(np.sum(values.view(f"u{width}"), dtype=np.uint64))
            sums[name] = total % (1 << 64)
        elif pa.types.is_binary(t) and len(column) <= _CHECKED_BINARY_ROWS:
            crc = 0
            for value in column.to_pylist():
                crc = zlib.crc32(value, crc)
            sums[name] = crc
    return json.dumps(sums, sort_keys=True).encode()


def _checked_write(storage: Storage, rel: str, table: pa.Table) -> None:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           CHECKSUM: _checksum(table)})
    # (read back only when an actor restarts: kept out of the page cache, see direct_write)
    with storage.open_output(rel, uncached=True) as out, ipc.new_file(out, table.schema) as writer:
        writer.write_table(table)


def _check(table: pa.Table, storage: Storage, rel: str) -> pa.Table:
    """``table`` as read from index file ``rel``, checked against the sums written with it
    (files of earlier versions have none); IndexUnavailable where they differ."""
    stored = (table.schema.metadata or {}).get(CHECKSUM)
    if stored is not None:
        want, got = json.loads(stored), json.loads(_checksum(table))
        bad = sorted(name for name in want if got.get(name) != want[name])
        if bad:
            raise IndexUnavailable(f"index file {storage.url_of(storage.path(rel))}: column(s) "
                                   f"{bad} do not hold what was written (damaged)")
    return table.replace_schema_metadata(None)


def write(storage: Storage, rel: str, index: pa.Table) -> None:
    table = index.drop_columns(["pos"]) if "pos" in index.column_names else index
    _checked_write(storage, rel, table)


def write_moves(storage: Storage, rel: str, moves: list[Move]) -> None:
    survivors = [None if m.survivors is None else
                 np.packbits(m.survivors, bitorder="little").tobytes() for m in moves]
    table = pa.table([
        pa.array([m.ordinal for m in moves], pa.int32()),
        pa.array([m.first_file for m in moves], pa.int32()),
        pa.array([m.first_slot for m in moves], pa.int64()),
        pa.array([0 if m.survivors is None else len(m.survivors) for m in moves], pa.int64()),
        pa.array([m.rows_per_file for m in moves], pa.int64()),
        pa.array(survivors, pa.binary()),
    ], schema=MOVES_SCHEMA)
    _checked_write(storage, rel, table)


def _read_moves(storage: Storage, rel: str) -> list[Move]:
    """A moves file's moves."""
    try:
        table = _check(ipc.open_file(pa.BufferReader(storage.read(rel))).read_all(),
                       storage, rel)
        if not table.schema.equals(MOVES_SCHEMA):
            raise ValueError(f"columns {table.schema.names}, not {MOVES_SCHEMA.names}")
        moves = []
        for m in table.to_pylist():
            survivors = None
            if m["rows_per_file"] < 1:
                raise ValueError(f"file {m['ordinal']}: {m['rows_per_file']} rows per file")
            if m["survivors"] is not None:
                bits = np.frombuffer(m["survivors"], dtype=np.uint8)
                if len(bits) != -(-m["rows"] // 8):
                    raise ValueError(f"file {m['ordinal']}: {len(bits)} bytes of survivors "
                                     f"for {m['rows']} rows")
                survivors = np.unpackbits(bits, count=m["rows"], bitorder="little").view(bool)
            moves.append(Move(m["ordinal"], m["first_file"], m["first_slot"], survivors,
                              m["rows_per_file"]))
    except (FileNotFoundError, OSError, pa.ArrowInvalid, ValueError) as e:
        raise IndexUnavailable(f"index file {storage.url_of(storage.path(rel))}: {e}") from None
    return moves


def apply_moves(file: np.ndarray, row: np.ndarray, moves: list[Move]) -> None:
    """Point the locators ``(file, row)`` (updated in place) where ``moves`` took their rows:
    entries of a moved file's rows point where they went, those of its rows that did not
    survive at (-1, -1). One pass over the entries finds those of moved files."""
    if not moves or not len(file):
        return
    ordinals = np.array([m.ordinal for m in moves], dtype=np.int64)
    by_ordinal = np.argsort(ordinals)
    hit, k = find_in(file, ordinals[by_ordinal].astype(file.dtype))
    which = by_ordinal[k]
    if len(moves) > 1:
        grouped = stable_order(which, len(moves))
        hit, which = hit[grouped], which[grouped]
    cuts = np.searchsorted(which, np.arange(len(moves) + 1))
    for j, move in enumerate(moves):
        at = hit[cuts[j]:cuts[j + 1]]
        if not len(at):
            continue
        if move.survivors is None:  # kept, renumbered
            file[at] = move.first_file
            continue
        rows = row[at].astype(np.int64)
        inside = (rows >= 0) & (rows < len(move.survivors))
        alive = np.zeros(len(at), dtype=bool)
        alive[inside] = move.survivors[rows[inside]]
        rank = np.cumsum(move.survivors, dtype=np.int64) - 1
        q, r = np.divmod(move.first_slot + rank[rows[alive]], move.rows_per_file)
        file[at] = -1
        row[at] = -1
        file[at[alive]] = move.first_file + q
        row[at[alive]] = r


def keys(table: pa.Table) -> np.ndarray:
    """The (hi, lo) digests of ``table`` as one structured array."""
    out = np.empty(table.num_rows, dtype=KEY)
    out["hi"] = table.column("hi").to_numpy()
    out["lo"] = table.column("lo").to_numpy()
    return out


def absent(candidates: np.ndarray, schema: pa.Schema) -> pa.Table:
    """Entries saying the ``candidates`` keys left the index."""
    n = len(candidates)
    cols: dict[str, pa.Array] = {
        "hi": pa.array(candidates["hi"]), "lo": pa.array(candidates["lo"]),
        "file": pa.array(np.full(n, -1, np.int32)),
        "row": pa.array(np.full(n, -1, np.int32)), "op": pa.array(np.full(n, OP_ABSENT, np.int8)),
    }
    if "order" in schema.names:
        cols["order"] = pa.nulls(n, schema.field("order").type)
    return pa.table([cols[name] for name in schema.names], schema=schema)


def _read_one(storage: Storage, rel: str, schema: pa.Schema) -> pa.Table:
    try:
        data = pa.BufferReader(storage.read(rel))
        # .parquet: written by an earlier version
        table = pq.read_table(data) if rel.endswith(".parquet") else \
            ipc.open_file(data).read_all()
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as e:
        raise IndexUnavailable(f"index file {storage.url_of(storage.path(rel))}: {e}") from None
    table = _check(table, storage, rel)
    table = table.select([n for n in schema.names if n in table.column_names])
    if not table.schema.equals(schema):
        try:
            table = table.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
            raise IndexUnavailable(f"index file {rel} does not match: {e}") from None
    return table


def _last_of_each_key(parts: list[pa.Table]) -> pa.Table:
    """The newest entry of each key of ``parts`` (oldest first), sorted by key (tombstones of
    keys that left, OP_ABSENT, included)."""
    table = pa.concat_tables(parts)
    seq = np.concatenate([np.zeros(0, np.int64)]
                         + [np.full(p.num_rows, i, np.int64) for i, p in enumerate(parts)])
    k = keys(table)
    order = np.lexsort((seq, k["lo"], k["hi"]))
    k = k[order]
    last = np.ones(len(k), dtype=bool)
    last[:-1] = k[1:] != k[:-1]
    return table.take(pa.array(order[last]))


def _newest(parts: list[pa.Table]) -> pa.Table:
    """The newest entry of each key of ``parts`` (oldest first), sorted by key, without the
    keys that left (OP_ABSENT): every entry sorted."""
    table = _last_of_each_key(parts)
    return table.filter(pa.array(table.column("op").to_numpy() != OP_ABSENT))


def _sorted(hi: np.ndarray, lo: np.ndarray) -> bool:
    """Whether the keys (hi, lo) are strictly increasing."""
    up = hi[1:] > hi[:-1]
    return bool(np.all(up | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))))


def _fold(parts: list[pa.Table]) -> pa.Table:
    """A chain's parts (a base, then deltas) folded: per key the newest entry.

    The deltas (small) are folded among themselves, then spliced into the base (sorted by
    key, as written) where their keys are: one pass over the base, not a sort of it (a
    10M-key bucket's chain of a base, moves and one round's delta: 4.8 s to read with a
    lexsort of every entry, 0.6 s so)."""
    base = parts[0]
    hi, lo = base.column("hi").to_numpy(), base.column("lo").to_numpy()
    if len(hi) < 2 or not _sorted(hi, lo) or \
            (base.column("op").to_numpy() == OP_ABSENT).any():
        return _newest(parts)  # (a base unsorted, tiny or naming keys that left: sort all)
    changes = _last_of_each_key(parts[1:])
    c_hi, c_lo = changes.column("hi").to_numpy(), changes.column("lo").to_numpy()
    at, found = _locate(hi, lo, c_hi, c_lo)
    entering = changes.column("op").to_numpy() != OP_ABSENT
    # the base without the entries of changed keys, then the changes that stay, each where its
    # key falls among the base's: a take over [base, entering changes]
    kept = np.delete(np.arange(len(hi), dtype=np.int64), at[found])
    removed = np.sort(at[found])
    where = at[entering] - np.searchsorted(removed, at[entering], side="left")
    out = np.insert(kept, where, len(hi) + np.arange(int(entering.sum()), dtype=np.int64))
    return pa.concat_tables([base, changes.filter(pa.array(entering))]).take(pa.array(out))


def tombstones(storage: Storage, chain: list[str], schema: pa.Schema) -> pa.Table:
    """The deleted keys a bucket's index remembers (``op`` OP_DELETE), sorted by key. Where
    rows moved does not matter to them: the chain's moves files are not read."""
    parts = [_read_one(storage, rel, schema) for rel in chain if not is_moves(rel)]
    if not parts:
        raise IndexUnavailable("empty index chain")
    table = parts[0] if len(parts) == 1 else _fold(parts)
    return table.filter(pa.array(table.column("op").to_numpy() == OP_DELETE))


def read(storage: Storage, chain: list[str], schema: pa.Schema) -> pa.Table:
    """A bucket's index from its chain: sorted by key, one live-or-tombstone entry per key."""
    parts: list[pa.Table] = []
    # the locators of each part read, as arrays to update in place once a moves file follows
    located: list[tuple[np.ndarray, np.ndarray] | None] = []
    for rel in chain:
        if is_moves(rel):
            moves = _read_moves(storage, rel)
            for j, part in enumerate(parts):
                loc = located[j]
                if loc is None:
                    loc = located[j] = (part.column("file").to_numpy().copy(),
                                        part.column("row").to_numpy().copy())
                apply_moves(loc[0], loc[1], moves)
        else:
            parts.append(_read_one(storage, rel, schema))
            located.append(None)
    if not parts:
        raise IndexUnavailable("empty index chain")
    moved = any(loc is not None for loc in located)
    for j, loc in enumerate(located):
        if loc is not None:
            part = parts[j]
            part = part.set_column(part.schema.get_field_index("file"), "file", pa.array(loc[0]))
            parts[j] = part.set_column(part.schema.get_field_index("row"), "row",
                                       pa.array(loc[1]))
    table = parts[0] if len(parts) == 1 else _fold(parts)
    if moved:  # every live key's entry must point at a row
        nowhere = (table.column("op").to_numpy() == OP_UPSERT) & \
            (table.column("file").to_numpy() < 0)
        if nowhere.any():
            raise IndexUnavailable(
                f"index chain ending {storage.url_of(storage.path(chain[-1]))}: "
                f"{int(np.count_nonzero(nowhere))} live keys point at no row after the files' "
                "moves (no later entry replaced theirs)")
    return table
