"""Generated CDC partitions: a base load and an ordered stream of CDC deltas, shaped by knobs.

A dataset directory holds::

    base/part-NNNNN.parquet   the base load (no op column: an upsert delta), keys 0..base_rows-1
    deltas/delta-NNN.parquet  CDC deltas of the full round ("Op": I insert, U update, D delete)
    incremental.parquet       one more CDC delta, folded in by the incremental round
    dataset.json              the spec, the file lists and their sizes (Parquet and as Arrow)

Key number ``k`` is the identity of a row; ``key`` picks its columns: ``int64`` is ``id = k``,
``composite`` is two strings ``(tenant, order_ref) = ("tenant-<k % 1024>", "order-<k // 1024>")``
(distinct keys never collide). ``lsn`` grows along the whole stream, so a key's newest version
is the row with its greatest ``lsn``; delete rows carry a full row image, as DMS exports do.

Each delta has ``delete_fraction`` deletes and ``new_key_fraction`` inserts of never-seen keys;
the rest update existing keys. Which existing keys a delta touches is its locality: ``uniform``
over all keys so far, ``hot`` only the newest ``hot_fraction`` of them, or ``zipf`` (skew
``zipf_s``: a few keys take most changes; the hot keys are scattered over the table). A key
may change several times in one delta, and a deleted key may come back.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEY_COLUMNS = {"int64": ("id",), "composite": ("tenant", "order_ref")}
LOCALITIES = ("uniform", "hot", "zipf")
WIDTHS = ("narrow", "wide")
ORDER_COLUMN = "lsn"
OP_COLUMN = "Op"
_TENANTS = 1024
_WIDE_TEXT_COLUMNS = 8  # 8 x 100-byte strings + 8 doubles: a ~1 KB row
_WIDE_TEXT_BYTES = 100
_ZIPF_STRIDE = 2_654_435_761  # scatters zipf ranks over the key space (made coprime per draw)


@dataclass(frozen=True)
class DataSpec:
    """The shape of a generated partition (every field is a command-line knob)."""

    base_rows: int = 20_000_000
    deltas: int = 10
    delta_rows: int = 200_000
    incremental_rows: int = 200_000
    delete_fraction: float = 0.1
    new_key_fraction: float = 0.1
    key: str = "int64"
    locality: str = "uniform"
    incremental_locality: str = "hot"
    hot_fraction: float = 0.05
    zipf_s: float = 1.2
    width: str = "narrow"
    file_rows: int = 0  # rows per base file; 0: about 128 MiB as Arrow (1M narrow, 128K wide)
    seed: int = 7

    def __post_init__(self) -> None:
        if self.key not in KEY_COLUMNS:
            raise ValueError(f"key {self.key!r}: expected one of {sorted(KEY_COLUMNS)}")
        for name in ("locality", "incremental_locality"):
            if getattr(self, name) not in LOCALITIES:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {LOCALITIES}")
        if self.width not in WIDTHS:
            raise ValueError(f"width {self.width!r}: expected one of {WIDTHS}")
        if self.base_rows < 1 or self.deltas < 0 or self.delta_rows < 1 or self.file_rows < 0:
            raise ValueError("base_rows and delta_rows must be at least 1, deltas at least 0")
        if self.incremental_rows < 1:
            raise ValueError("incremental_rows must be at least 1")
        if (min(self.delete_fraction, self.new_key_fraction) < 0
                or self.delete_fraction + self.new_key_fraction > 1):
            raise ValueError("delete and new-key fractions must be >= 0 and add up to at most 1")
        if not 0 < self.hot_fraction <= 1:
            raise ValueError("hot_fraction must be in (0, 1]")
        if self.zipf_s <= 1:
            raise ValueError("zipf_s must be greater than 1")

    @property
    def key_columns(self) -> tuple[str, ...]:
        return KEY_COLUMNS[self.key]

    @property
    def rows_per_file(self) -> int:
        return self.file_rows or (1_000_000 if self.width == "narrow" else 128_000)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Dataset:
    """A generated partition on disk: what every engine reads."""

    root: str
    spec: DataSpec
    base: tuple[str, ...]
    deltas: tuple[str, ...]
    incremental: str
    input_rows: int  # base + deltas of the full round
    parquet_bytes: int  # base + deltas
    arrow_bytes: int  # base + deltas, decoded
    incremental_arrow_bytes: int

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.spec.key_columns

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.base + self.deltas

    def schema(self) -> pa.Schema:
        """The table schema: the base files' (no op column)."""
        return pq.read_schema(self.base[0])

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Dataset:
        spec_fields = {f.name for f in fields(DataSpec)}
        spec = DataSpec(**{k: v for k, v in d["spec"].items() if k in spec_fields})
        return cls(d["root"], spec, tuple(d["base"]), tuple(d["deltas"]), d["incremental"],
                   d["input_rows"], d["parquet_bytes"], d["arrow_bytes"],
                   d["incremental_arrow_bytes"])

    @classmethod
    def load(cls, root: Path) -> Dataset:
        return cls.from_dict(json.loads((root / "dataset.json").read_text()))


def prepare(root: Path, spec: DataSpec, *, fresh: bool = False) -> tuple[Dataset, bool]:
    """The dataset of ``spec`` under ``root``: reused when generated before with the same spec
    (and every file still there), else generated anew. Returns it and whether it was reused."""
    if not fresh and (root / "dataset.json").exists():
        try:
            found = Dataset.load(root)
        except (ValueError, KeyError, TypeError):
            found = None
        if (found is not None and found.spec == spec
                and all(Path(f).exists() for f in (*found.inputs, found.incremental))):
            return found, True
    shutil.rmtree(root, ignore_errors=True)
    return generate(root, spec), False


def generate(root: Path, spec: DataSpec) -> Dataset:
    rng = np.random.default_rng(spec.seed)
    text = _text_pool(rng) if spec.width == "wide" else None
    (root / "base").mkdir(parents=True)
    (root / "deltas").mkdir()
    base, arrow_bytes = [], 0
    for i, start in enumerate(range(0, spec.base_rows, spec.rows_per_file)):
        keys = np.arange(start, min(start + spec.rows_per_file, spec.base_rows), dtype=np.int64)
        table = _rows(rng, spec, keys, keys.copy(), text)
        arrow_bytes += table.nbytes
        base.append(_write(table, root / "base" / f"part-{i:05d}.parquet"))
    stream = _Stream(spec.base_rows, spec.base_rows)
    deltas = []
    for d in range(spec.deltas):
        table = stream.delta(rng, spec, spec.delta_rows, spec.locality, text)
        arrow_bytes += table.nbytes
        deltas.append(_write(table, root / "deltas" / f"delta-{d:03d}.parquet"))
    inc = stream.delta(rng, spec, spec.incremental_rows, spec.incremental_locality, text)
    dataset = Dataset(
        str(root), spec, tuple(base), tuple(deltas), _write(inc, root / "incremental.parquet"),
        spec.base_rows + spec.deltas * spec.delta_rows,
        sum(Path(f).stat().st_size for f in base + deltas), arrow_bytes, inc.nbytes,
    )
    (root / "dataset.json").write_text(json.dumps(dataset.to_dict(), indent=1))
    return dataset


class _Stream:
    """Where the stream stands: the next LSN and the next never-used key number."""

    def __init__(self, next_lsn: int, next_key: int) -> None:
        self.next_lsn = next_lsn
        self.next_key = next_key

    def delta(self, rng: np.random.Generator, spec: DataSpec, rows: int, locality: str,
              text: pa.Array | None) -> pa.Table:
        n_del = round(rows * spec.delete_fraction)
        n_new = round(rows * spec.new_key_fraction)
        n_upd = rows - n_del - n_new
        existing = self.next_key
        keys = np.concatenate([
            pick_keys(rng, spec, locality, n_upd, existing),
            np.arange(existing, existing + n_new, dtype=np.int64),
            pick_keys(rng, spec, locality, n_del, existing),
        ])
        ops = np.repeat(np.array([0, 1, 2], dtype=np.int8), [n_upd, n_new, n_del])
        order = rng.permutation(rows)
        keys, ops = keys[order], ops[order]
        lsn = np.arange(self.next_lsn, self.next_lsn + rows, dtype=np.int64)
        self.next_lsn += rows
        self.next_key += n_new
        table = _rows(rng, spec, keys, lsn, text)
        return table.append_column(OP_COLUMN, pa.array(["U", "I", "D"]).take(ops))


def pick_keys(rng: np.random.Generator, spec: DataSpec, locality: str, count: int,
              existing: int) -> np.ndarray:
    """``count`` key numbers below ``existing``, drawn by ``locality``."""
    if locality == "uniform":
        return rng.integers(0, existing, count, dtype=np.int64)
    if locality == "hot":
        low = min(int(existing * (1 - spec.hot_fraction)), existing - 1)
        return rng.integers(low, existing, count, dtype=np.int64)
    ranks = (rng.zipf(spec.zipf_s, count) - 1) % existing
    stride = _ZIPF_STRIDE
    while math.gcd(stride, existing) != 1:
        stride += 2
    return (ranks.astype(np.int64) * (stride % existing)) % existing


def key_arrays(spec: DataSpec, keys: np.ndarray) -> dict[str, pa.Array]:
    """The key columns of key numbers ``keys``."""
    if spec.key == "int64":
        return {"id": pa.array(keys, pa.int64())}
    return {
        "tenant": _prefixed("tenant-", keys % _TENANTS),
        "order_ref": _prefixed("order-", keys // _TENANTS),
    }


def _prefixed(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def _rows(rng: np.random.Generator, spec: DataSpec, keys: np.ndarray, lsn: np.ndarray,
          text: pa.Array | None) -> pa.Table:
    n = len(keys)
    columns = {
        **key_arrays(spec, keys),
        ORDER_COLUMN: pa.array(lsn, pa.int64()),
        "qty": pa.array(rng.integers(0, 1000, n, dtype=np.int32)),
        "price": pa.array(rng.random(n) * 100),
        "status": pa.array(["new", "paid", "shipped", "returned"]).take(
            rng.integers(0, 4, n, dtype=np.int8)),
        "customer": _prefixed("c", rng.integers(0, 1_000_000, n)),
        "updated": pa.array(lsn * 1_000_000, pa.timestamp("us")),
        "flag": pa.array(rng.random(n) < 0.5),
    }
    if text is not None:
        for i in range(_WIDE_TEXT_COLUMNS):
            columns[f"note_{i}"] = text.take(rng.integers(0, len(text), n))
            columns[f"metric_{i}"] = pa.array(rng.random(n))
    return pa.table(columns)


def _text_pool(rng: np.random.Generator, size: int = 1 << 16) -> pa.Array:
    """Distinct random lowercase strings: too many for Parquet's dictionary pages to hold."""
    letters = rng.integers(97, 123, (size, _WIDE_TEXT_BYTES), dtype=np.uint8)
    return pa.array(letters.view(f"S{_WIDE_TEXT_BYTES}").ravel().astype(str))


def _write(table: pa.Table, path: Path) -> str:
    pq.write_table(table, path)
    return str(path)
