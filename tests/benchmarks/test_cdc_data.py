"""The CDC generator makes the stream its knobs describe."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def cdc(bench_modules: None) -> ModuleType:
    import cdc_data

    return cdc_data


def test_a_delta_has_the_asked_fractions_of_updates_inserts_and_deletes(
        cdc: ModuleType, tmp_path: Path) -> None:
    spec = cdc.DataSpec(base_rows=10_000, deltas=2, delta_rows=1_000, incremental_rows=500,
                        delete_fraction=0.2, new_key_fraction=0.3)
    ds = cdc.generate(tmp_path, spec)
    assert ds.input_rows == 12_000 and len(ds.deltas) == 2
    first, second = (pq.read_table(f) for f in ds.deltas)
    ops = first.column("Op").value_counts().to_pylist()
    assert {o["values"]: o["counts"] for o in ops} == {"U": 500, "I": 300, "D": 200}
    inserted = pc.filter(first["id"], pc.equal(first["Op"], "I")).to_numpy()
    assert sorted(inserted) == list(range(10_000, 10_300))  # keys never seen before
    assert sorted(pc.filter(second["id"], pc.equal(second["Op"], "I")).to_numpy())[0] == 10_300
    lsn = np.concatenate([pq.read_table(f, columns=["lsn"])["lsn"].to_numpy()
                          for f in (*ds.base, *ds.deltas, ds.incremental)])
    assert (np.diff(lsn) == 1).all()  # one order along the whole stream
    assert pq.read_table(ds.incremental).num_rows == 500


def test_hot_changes_touch_only_the_newest_keys(cdc: ModuleType, tmp_path: Path) -> None:
    spec = cdc.DataSpec(base_rows=10_000, deltas=0, incremental_rows=2_000,
                        incremental_locality="hot", hot_fraction=0.05, new_key_fraction=0)
    inc = pq.read_table(cdc.generate(tmp_path, spec).incremental)
    assert pc.min(inc["id"]).as_py() >= 9_500


def test_zipf_changes_concentrate_on_few_keys_scattered_over_the_table(cdc: ModuleType) -> None:
    rng = np.random.default_rng(1)
    spec = cdc.DataSpec(zipf_s=1.2)
    keys = cdc.pick_keys(rng, spec, "zipf", 100_000, 1_000_000)
    assert keys.min() >= 0 and keys.max() < 1_000_000
    _, counts = np.unique(keys, return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[:100].sum() > 0.3 * len(keys)  # skewed
    uniform = cdc.pick_keys(rng, spec, "uniform", 100_000, 1_000_000)
    assert np.sort(np.unique(uniform, return_counts=True)[1])[::-1][:100].sum() < 1_000


def test_composite_keys_are_strings_and_distinct_per_key_number(cdc: ModuleType) -> None:
    spec = cdc.DataSpec(key="composite")
    cols = cdc.key_arrays(spec, np.arange(5_000, dtype=np.int64))
    assert set(cols) == {"tenant", "order_ref"}
    pairs = set(zip(cols["tenant"].to_pylist(), cols["order_ref"].to_pylist(), strict=True))
    assert len(pairs) == 5_000


def test_wide_rows_are_about_a_kilobyte(cdc: ModuleType, tmp_path: Path) -> None:
    ds = cdc.generate(tmp_path, cdc.DataSpec(base_rows=2_000, deltas=0, delta_rows=10,
                                             incremental_rows=10, width="wide"))
    table = pq.read_table(ds.base[0])
    assert 900 <= table.nbytes / table.num_rows <= 1_300


def test_a_dataset_is_reused_only_while_its_spec_is_the_same(
        cdc: ModuleType, tmp_path: Path) -> None:
    spec = cdc.DataSpec(base_rows=1_000, deltas=1, delta_rows=100, incremental_rows=100)
    first, reused = cdc.prepare(tmp_path, spec)
    assert not reused
    again, reused = cdc.prepare(tmp_path, spec)
    assert reused and again == first
    _, reused = cdc.prepare(tmp_path, cdc.DataSpec(base_rows=1_000, deltas=1, delta_rows=100,
                                                   incremental_rows=100, seed=8))
    assert not reused


@pytest.mark.parametrize("knobs", [
    {"key": "uuid"}, {"locality": "recent"}, {"width": "huge"}, {"zipf_s": 1.0},
    {"delete_fraction": 0.6, "new_key_fraction": 0.5}, {"hot_fraction": 0},
])
def test_bad_knobs_are_named(cdc: ModuleType, knobs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(knobs)).split("_")[0]):
        cdc.DataSpec(**knobs)
