"""The object store: put/get, zero-copy reads, and values that hold refs (every backend)."""

from __future__ import annotations

import gc

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import runtime


@runtime.remote
def column_sum(table: pa.Table) -> int:
    return int(pc.sum(table["a"]).as_py())


@runtime.remote
def array_info(arr: np.ndarray) -> tuple[int, bool]:
    return int(arr.sum()), bool(arr.flags.writeable)


@runtime.remote
def make_table(n: int) -> pa.Table:
    return pa.table({"a": np.arange(n, dtype=np.int64)})


def test_put_get_roundtrip_of_common_values(rt):
    for value in [1, "text", b"\x00bytes", {"k": [1, 2]}, None, (1, 2.5)]:
        assert runtime.get(runtime.put(value)) == value


def test_large_numpy_array_is_shared_not_copied(rt):
    arr = np.arange(5_000_000, dtype=np.int64)
    ref = runtime.put(arr)
    out = runtime.get(ref)
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.owndata  # a view onto store memory
    assert runtime.get(array_info.remote(ref)) == (int(arr.sum()), False)


def test_arrow_table_get_allocates_no_arrow_memory(rt):
    n = 4_000_000
    ref = make_table.remote(n)
    runtime.wait([ref])
    before = pa.total_allocated_bytes()
    table = runtime.get(ref)
    assert table.num_rows == n
    assert pa.total_allocated_bytes() - before < 1 << 20  # 32 MB of data, not copied
    assert runtime.get(column_sum.remote(ref)) == n * (n - 1) // 2


def test_values_containing_refs_keep_them_alive(rt):
    inner = runtime.put(np.arange(100_000))
    outer = runtime.put({"inner": [inner]})
    del inner
    gc.collect()
    got = runtime.get(outer)["inner"][0]
    assert int(runtime.get(got).sum()) == sum(range(100_000))


def test_put_of_a_ref_is_refused(rt):
    import pytest

    with pytest.raises(TypeError, match="ObjectRef"):
        runtime.put(runtime.put(1))
