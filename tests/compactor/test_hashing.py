"""The key digest: a pinned algorithm, equal for equal keys, different for different keys.

``_reference_digest`` re-implements the algorithm from the module docstring one row at a time in
plain Python, so the vectorized code is checked against the written specification, and the
golden vectors pin both to fixed numbers.
"""

from __future__ import annotations

import datetime as dt
import itertools
import pickle
from collections.abc import Callable
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compactor.hashing import (
    HASH_ID,
    KeyHashError,
    NullKeyError,
    UnsupportedKeyType,
    bucket_of,
    bucket_start,
    key_digest,
)

MASK = (1 << 64) - 1


def _permutation(shifts: tuple[int, int, int], mults: tuple[int, int]) -> Callable[[int], int]:
    def f(x: int) -> int:
        x ^= x >> shifts[0]
        x = (x * mults[0]) & MASK
        x ^= x >> shifts[1]
        x = (x * mults[1]) & MASK
        return x ^ (x >> shifts[2])

    return f


F_HI = _permutation((33, 33, 33), (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53))
F_LO = _permutation((30, 27, 31), (0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
SEED_HI, SEED_LO = 0x243F6A8885A308D3, 0x13198A2E03707344
NANOS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _value_words(t: pa.DataType, v: object) -> list[int]:
    """[header, payload words...] of one value, straight from the docstring's table."""
    if pa.types.is_integer(t):
        assert isinstance(v, int)
        return [(2 if v >= 1 << 63 else 1) << 56 | 8, v & MASK]
    if pa.types.is_boolean(t):
        return [3 << 56 | 8, int(bool(v))]
    if pa.types.is_date(t):
        assert isinstance(v, int)  # storage value: days (date32) or milliseconds (date64)
        return [4 << 56 | 8, (v * 86_400_000 if pa.types.is_date32(t) else v) & MASK]
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        assert isinstance(v, int)
        seconds, sub = divmod(v * NANOS[t.unit], 10**9)
        return [(5 if pa.types.is_timestamp(t) else 7) << 56 | 16, seconds & MASK, sub]
    if pa.types.is_time(t):
        assert isinstance(v, int)
        return [6 << 56 | 8, v * NANOS[t.unit]]
    if pa.types.is_decimal(t):
        assert isinstance(v, Decimal)
        unscaled = int(v.scaleb(t.scale)) & ((1 << 256) - 1)
        return [10 << 56 | (t.scale % 65536) << 32 | 32] + [
            (unscaled >> (64 * i)) & MASK for i in range(4)
        ]
    data = v.encode() if isinstance(v, str) else v
    assert isinstance(data, bytes)
    tag = 8 if isinstance(v, str) else 9
    padded = data + b"\0" * (-len(data) % 8)
    words = [int.from_bytes(padded[i : i + 8], "little") for i in range(0, len(padded), 8)]
    return [tag << 56 | len(data), *words]


def _storage_values(column: pa.Array) -> list[object]:
    """Python values, with temporal types as their raw integers (no precision lost)."""
    t = column.type
    if pa.types.is_temporal(t):
        width = pa.int32() if t.bit_width == 32 else pa.int64()
        return list(column.view(width).to_pylist())
    return list(column.to_pylist())


def _reference_digest(table: pa.Table, key: list[str]) -> list[tuple[int, int]]:
    columns = [(table.schema.field(k).type, _storage_values(table.column(k).combine_chunks()))
               for k in key]
    out = []
    for i in range(table.num_rows):
        words = [w for t, values in columns for w in _value_words(t, values[i])]
        hi, lo = SEED_HI, SEED_LO
        for w in words:
            hi, lo = F_HI(hi ^ w), F_LO(lo ^ w)
        out.append((hi, lo))
    return out


def _digest_pairs(table: pa.Table | pa.RecordBatch, key: list[str]) -> list[tuple[int, int]]:
    hi, lo = key_digest(table, key)
    return list(zip(hi.tolist(), lo.tolist(), strict=True))


def _one(values: list[object], t: pa.DataType | None = None) -> list[str]:
    """Hex digests of a single-column key."""
    table = pa.table({"k": pa.array(values, t)})
    return [f"{hi:016x}{lo:016x}" for hi, lo in _digest_pairs(table, ["k"])]


UTC = dt.UTC

# The digests below are fixed forever for HASH_ID "ckh128-v1": a failing case here means the
# algorithm changed, which re-buckets every existing table. Change HASH_ID instead.
GOLDEN: list[tuple[str, list[object], pa.DataType]] = [
    ("int64", [0, 1, -1, 2**63 - 1, -(2**63)], pa.int64()),
    ("int8", [5, -128], pa.int8()),
    ("uint64", [5, 2**64 - 1], pa.uint64()),
    ("bool", [False, True], pa.bool_()),
    ("string", ["", "a", "1", "hello, world!", "ümlaut-ß-€", "x" * 17], pa.string()),
    ("binary", [b"", b"\x00", b"\xff" * 9], pa.binary()),
    ("date32", [dt.date(1970, 1, 1), dt.date(2024, 2, 29), dt.date(1900, 1, 1)], pa.date32()),
    ("timestamp_us_utc", [dt.datetime(2024, 5, 1, 12, 30, 15, 123456, UTC)],
     pa.timestamp("us", "UTC")),
    ("timestamp_s", [dt.datetime(1969, 12, 31, 23, 59, 59)], pa.timestamp("s")),
    ("time64_ns", [dt.time(23, 59, 59, 999999)], pa.time64("ns")),
    ("duration_ms", [dt.timedelta(milliseconds=-1500)], pa.duration("ms")),
    ("decimal128", [Decimal("1.50"), Decimal("-0.01")], pa.decimal128(10, 2)),
    ("fixed_size_binary", [b"\x01\x02\x03"], pa.binary(3)),
]
GOLDEN_DIGESTS: dict[str, list[str]] = {
    "int64": [
        "f1c9ccf46b039e938c2fd6557df0fe97",
        "4f5d46eed1aa7da112d5b1338c9ebcaf",
        "0101e3f867ead4bf3b118d38f74c02ce",
        "ed1a534f308017a9975bc558364d294d",
        "da5e41509cb7111c14e6ee593c32c1cd",
    ],
    "int8": ["06dc0781a8c2bf9aa1a234dbff6a5bef", "7761e8985f42988d6d96b69ca6b74823"],
    "uint64": ["06dc0781a8c2bf9aa1a234dbff6a5bef", "6fcab4aab72d52bc144d3ce9144521b3"],
    "bool": ["7c909e6cc9c793bbda59f60b7119e94d", "03e648d086c494fa2796a20aad0c9f1a"],
    "string": [
        "3ab42215e3b84a50565cb3d3726e24cb",
        "35a6cca808d19d34c3540cca0a44ea1b",
        "9d1a748c0b74de24aebff46567212d43",
        "c526a9f2e6b52ee5c9b824bb6f842af0",
        "02ea52c19b3b51c2e031be691c614aa8",
        "fdaee55db04925092299fe5a7843f066",
    ],
    "binary": [
        "e19821f0dfef3cd649e113eea4b28051",
        "661e589cf32a3fadcd99fa90c86af74e",
        "e8af58df8275bd1c8542a36c2f0dd496",
    ],
    "date32": [
        "2d4c4d080ee52c978985f7c427a3980f",
        "6d3d32d282bd4356ae2d3d50201b45a1",
        "438dc476a842f0b6961fb4b88e638079",
    ],
    "timestamp_us_utc": ["8cbe1a3148492e0992b6a6fe42de51da"],
    "timestamp_s": ["6a2bf9011617fed3c7246e5157b10204"],
    "time64_ns": ["8b616af686b19c0edef36477d3434f39"],
    "duration_ms": ["fce628a6eb1d434dcecdd8cf47832360"],
    "decimal128": ["38a868f6df18a43ecf37436e2ef64cfd", "d12defbe1fcd669efba0ff438952eb48"],
    "fixed_size_binary": ["c976fcadaf609ebda1b5cd1273a121a7"],
    "composite": ["ad679b970c807edd8711827b542288be", "54eafb0c9ccb27cf4e382e2edd4fc2f5"],
}


def test_hash_id_names_the_algorithm() -> None:
    assert HASH_ID == "ckh128-v1"


@pytest.mark.parametrize(("name", "values", "type_"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_vectors(name: str, values: list[object], type_: pa.DataType) -> None:
    table = pa.table({"k": pa.array(values, type_)})
    assert _one(values, type_) == GOLDEN_DIGESTS[name]
    assert _digest_pairs(table, ["k"]) == _reference_digest(table, ["k"])


def test_golden_composite_key() -> None:
    table = pa.table({"tenant": pa.array(["ab", "a"]), "part": pa.array(["c", "bc"]),
                      "id": pa.array([7, 7], pa.int64())})
    digests = [f"{hi:016x}{lo:016x}" for hi, lo in _digest_pairs(table, ["tenant", "part", "id"])]
    assert digests == GOLDEN_DIGESTS["composite"]
    assert _digest_pairs(table, ["tenant", "part", "id"]) == _reference_digest(
        table, ["tenant", "part", "id"]
    )


# --- equal logical values, equal digests -------------------------------------------------------

EQUIVALENT = [
    ("integer widths and signedness", [pa.array([5, 0, 127], t) for t in
                                       (pa.int8(), pa.int32(), pa.int64(), pa.uint8(),
                                        pa.uint64())]),
    ("string encodings", [pa.array(["", "ab", "ü" * 9], t) for t in
                          (pa.string(), pa.large_string(), pa.string_view())]),
    ("binary encodings", [pa.array([b"abc", b"\0\0\1"], t) for t in
                          (pa.binary(), pa.large_binary(), pa.binary_view(), pa.binary(3))]),
    ("timestamp units and zones", [
        pa.array([0, 1_700_000_000, -1], pa.timestamp("s")),
        pa.array([0, 1_700_000_000_000, -1000], pa.timestamp("ms", "UTC")),
        pa.array([0, 1_700_000_000_000_000, -1_000_000], pa.timestamp("us", "Asia/Tokyo")),
        pa.array([0, 1_700_000_000 * 10**9, -(10**9)], pa.timestamp("ns", "-05:00")),
    ]),
    ("date widths", [pa.array([0, 19_000, -1], pa.date32()),
                     pa.array([0, 19_000 * 86_400_000, -86_400_000], pa.date64())]),
    ("time widths", [pa.array([0, 3600], pa.time32("s")),
                     pa.array([0, 3600 * 10**9], pa.time64("ns"))]),
    ("decimal widths", [pa.array([Decimal("1.25"), Decimal("-3.00")], t) for t in
                        (pa.decimal32(5, 2), pa.decimal128(20, 2), pa.decimal256(50, 2))]),
    ("dictionary encoding", [pa.array(["x", "y", "x"]),
                             pa.array(["x", "y", "x"]).dictionary_encode()]),
]


@pytest.mark.parametrize(("name", "arrays"), EQUIVALENT, ids=[e[0] for e in EQUIVALENT])
def test_equal_logical_values_hash_equal(name: str, arrays: list[pa.Array]) -> None:
    digests = [_digest_pairs(pa.table({"k": a}), ["k"]) for a in arrays]
    assert all(d == digests[0] for d in digests), name


def test_types_and_column_boundaries_are_kept_apart() -> None:
    def digest(**columns: pa.Array) -> tuple[int, int]:
        table = pa.table(columns)
        return _digest_pairs(table, list(columns))[0]

    distinct = [
        digest(k=pa.array([1])),
        digest(k=pa.array(["1"])),
        digest(k=pa.array([b"1"])),
        digest(k=pa.array([True])),
        digest(k=pa.array([1], pa.date32())),
        digest(k=pa.array([1], pa.timestamp("s"))),
        digest(k=pa.array([1], pa.duration("s"))),
        digest(k=pa.array([1], pa.time32("s"))),
        digest(k=pa.array([Decimal(1)], pa.decimal128(5, 0))),
        digest(k=pa.array([Decimal("1.0")], pa.decimal128(5, 1))),
        digest(k=pa.array([""])),
        digest(k=pa.array([b""])),
        digest(a=pa.array(["ab"]), b=pa.array(["c"])),
        digest(a=pa.array(["a"]), b=pa.array(["bc"])),
        digest(a=pa.array(["abc"]), b=pa.array([""])),
        digest(a=pa.array([""]), b=pa.array(["abc"])),
        digest(a=pa.array([1]), b=pa.array([2])),
        digest(a=pa.array([2]), b=pa.array([1])),
        digest(k=pa.array(["a\0"])),
        digest(k=pa.array(["a"])),
        digest(k=pa.array([2**63], pa.uint64())),
        digest(k=pa.array([-(2**63)], pa.int64())),
    ]
    assert len(set(distinct)) == len(distinct)


# --- chunking, slicing and offsets never change a digest ---------------------------------------


def _mixed_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    words = ["", "a", "ab", "abcdefgh", "abcdefghi", "long-" * 7, "ü"]
    return pa.table({
        "id": rng.integers(-(2**62), 2**62, n),
        "name": pa.array([words[i % len(words)] + str(i) for i in rng.integers(0, 10**6, n)],
                         pa.string()),
        "day": pa.array(rng.integers(0, 30_000, n).astype(np.int32), pa.date32()),
        "blob": pa.array([bytes([i % 256]) * (i % 20) for i in range(n)], pa.large_binary()),
    })


KEY = ["id", "name", "day", "blob"]


def test_chunked_and_sliced_columns_hash_like_contiguous_ones() -> None:
    table = _mixed_table(100_000)
    hi, lo = key_digest(table, KEY)
    rng = np.random.default_rng(1)

    def cut(column: pa.ChunkedArray) -> pa.ChunkedArray:
        bounds = [0, *sorted(rng.integers(0, table.num_rows, 7).tolist()), table.num_rows]
        return pa.chunked_array([column.slice(a, b - a)
                                 for a, b in itertools.pairwise(bounds)])

    # Every column is cut at its own random places, so chunks do not line up across columns.
    chunked = pa.table({name: cut(table.column(name)) for name in table.column_names})
    assert chunked.column("id").num_chunks == 8
    for other in (chunked, pa.Table.from_batches(table.to_batches(max_chunksize=999))):
        o_hi, o_lo = key_digest(other, KEY)
        np.testing.assert_array_equal(o_hi, hi)
        np.testing.assert_array_equal(o_lo, lo)
    for start, length in ((1, 50_000), (33_333, 1), (99_999, 1), (7, 0), (12_345, 80_000)):
        for part in (table.slice(start, length),
                     table.combine_chunks().to_batches()[0].slice(start, length),
                     chunked.slice(start, length)):
            p_hi, p_lo = key_digest(part, KEY)
            np.testing.assert_array_equal(p_hi, hi[start : start + length])
            np.testing.assert_array_equal(p_lo, lo[start : start + length])


def test_digest_matches_reference_on_mixed_rows() -> None:
    table = _mixed_table(300, seed=5).slice(17)
    assert _digest_pairs(table, KEY) == _reference_digest(table, KEY)


def test_empty_input() -> None:
    hi, lo = key_digest(_mixed_table(0), KEY)
    assert hi.dtype == lo.dtype == np.uint64
    assert len(hi) == len(lo) == 0


# --- errors ------------------------------------------------------------------------------------


def test_null_key_names_column_and_first_null_row_across_chunks() -> None:
    column = pa.chunked_array([pa.array(["a", "b", "c"]), pa.array(["d", None, None])])
    table = pa.table({"id": pa.array(range(6)), "name": column})
    with pytest.raises(NullKeyError, match=r"'name' at row 4") as info:
        key_digest(table, ["id", "name"])
    assert (info.value.column, info.value.row) == ("name", 4)
    revived = pickle.loads(pickle.dumps(info.value))
    assert (type(revived), str(revived)) == (NullKeyError, str(info.value))


def test_null_in_dictionary_values_is_a_null_key() -> None:
    column = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0]), pa.array(["x", None]))
    with pytest.raises(NullKeyError, match="row 1"):
        key_digest(pa.table({"k": column}), ["k"])


@pytest.mark.parametrize("type_", [pa.float64(), pa.list_(pa.int64()), pa.null()])
def test_unsupported_key_type(type_: pa.DataType) -> None:
    table = pa.table({"k": pa.array([None], type_)})
    with pytest.raises(UnsupportedKeyType, match=r"'k' has type") as info:
        key_digest(table, ["k"])
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_missing_or_empty_key_columns() -> None:
    table = pa.table({"k": [1]})
    with pytest.raises(KeyHashError, match=r"\['nope'\] not found"):
        key_digest(table, ["nope"])
    with pytest.raises(KeyHashError, match="non-empty"):
        key_digest(table, [])


# --- quality: no collisions, uniform buckets ---------------------------------------------------


@pytest.mark.slow
def test_no_collisions_among_millions_of_distinct_keys() -> None:
    n = 2_000_000
    ints = pa.table({"k": np.arange(-n // 2, n // 2, dtype=np.int64)})
    numbers = pc.cast(pa.array(np.arange(n)), pa.string())
    strings = pa.table({"k": pc.binary_join_element_wise("k", numbers, "")})
    composite = pa.table({"a": np.repeat(np.arange(1000), n // 1000),
                          "b": pc.cast(pa.array(np.arange(n) % 2000), pa.string())})
    digests = [key_digest(ints, ["k"]), key_digest(strings, ["k"]),
               key_digest(composite, ["a", "b"])]
    hi = np.concatenate([d[0] for d in digests])
    lo = np.concatenate([d[1] for d in digests])
    order = np.lexsort((lo, hi))
    same = (np.diff(hi[order]) == 0) & (np.diff(lo[order]) == 0)
    assert not same.any()
    # hi alone is a bijection of a single int64 key.
    assert len(np.unique(digests[0][0])) == n


@pytest.mark.parametrize("bucket_count", [1, 2, 7, 64, 100, 1000])
def test_buckets_are_uniform(bucket_count: int) -> None:
    n = 500_000
    for table, key in ((pa.table({"k": np.arange(n)}), ["k"]),
                       (pa.table({"k": [f"order-{i:08d}" for i in range(n)]}), ["k"])):
        hi, lo = key_digest(table, key)
        for lane in (hi, lo):
            buckets = bucket_of(lane, bucket_count)
            assert buckets.dtype == np.int32
            assert buckets.min() >= 0 and buckets.max() < bucket_count
            counts = np.bincount(buckets, minlength=bucket_count)
            expected = n / bucket_count
            chi2 = float(((counts - expected) ** 2 / expected).sum())
            df = bucket_count - 1
            assert chi2 <= df + 6 * np.sqrt(2 * df) + 1, (bucket_count, chi2)


def test_bucket_of_is_the_documented_range_split() -> None:
    hi = np.array([0, 2**32 - 1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert bucket_of(hi, 4).tolist() == [0, 0, 2, 3]
    assert bucket_of(hi, 2**31 - 1).tolist() == [0, 0, 2**30 - 1, 2**31 - 2]
    with pytest.raises(ValueError, match="bucket_count"):
        bucket_of(hi, 0)


# --- properties --------------------------------------------------------------------------------

int64s = st.integers(-(2**63), 2**63 - 1)
texts = st.text(max_size=40)
blobs = st.binary(max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(int64s, texts, blobs), min_size=1, max_size=60),
       st.integers(0, 59), st.integers(1, 60))
def test_vectorized_digest_equals_reference(
    rows: list[tuple[int, str, bytes]], start: int, length: int
) -> None:
    table = pa.table({"i": pa.array([r[0] for r in rows], pa.int64()),
                      "s": pa.array([r[1] for r in rows]),
                      "b": pa.array([r[2] for r in rows])}).slice(start, length)
    for key in (["i"], ["s"], ["b"], ["s", "i", "b"]):
        assert _digest_pairs(table, key) == _reference_digest(table, key)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.sampled_from(["", "a", "ab", "b", "aab"])),
                min_size=2, max_size=40))
def test_digests_are_equal_exactly_when_keys_are_equal(rows: list[tuple[int, str]]) -> None:
    table = pa.table({"i": pa.array([r[0] for r in rows], pa.int16()),
                      "s": pa.array([r[1] for r in rows])})
    digests = _digest_pairs(table, ["s", "i"])
    for (row_a, dig_a) in zip(rows, digests, strict=True):
        for (row_b, dig_b) in zip(rows, digests, strict=True):
            assert (row_a == row_b) == (dig_a == dig_b)


@settings(max_examples=100, deadline=None)
@given(st.lists(texts, min_size=1, max_size=50), st.lists(st.integers(0, 50), max_size=5))
def test_any_chunking_gives_the_same_digest(values: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(values), *[min(c, len(values)) for c in cuts]})
    chunked = pa.chunked_array([pa.array(values[a:b], pa.string())
                                for a, b in itertools.pairwise(bounds)],
                               type=pa.string())
    assert _digest_pairs(pa.table({"k": chunked}), ["k"]) == _digest_pairs(
        pa.table({"k": pa.array(values)}), ["k"])


@pytest.mark.parametrize("bucket_count", [1, 2, 3, 7, 1000, 2**31 - 1])
def test_bucket_start_is_the_least_digest_of_each_bucket(bucket_count: int) -> None:
    rng = np.random.default_rng(bucket_count)
    buckets = np.unique(np.r_[0, bucket_count - 1, rng.integers(0, bucket_count, 50)])
    starts = np.array([bucket_start(int(b), bucket_count) for b in buckets], dtype=np.uint64)
    assert bucket_of(starts, bucket_count).tolist() == buckets.tolist()
    below = starts[buckets > 0] - np.uint64(1)
    assert bucket_of(below, bucket_count).tolist() == (buckets[buckets > 0] - 1).tolist()
    assert bucket_start(bucket_count, bucket_count) == 2**64
    with pytest.raises(ValueError, match="outside"):
        bucket_start(bucket_count + 1, bucket_count)
