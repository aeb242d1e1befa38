"""Where rewritten rows land: ``RewriteMap`` against a plain sort by locator."""

from __future__ import annotations

import numpy as np
import pytest

from compactor.pipeline import locators, rewrite_map
from compactor.pipeline.locators import SOURCE_BASE, compacted, member, renumber
from compactor.pipeline.rewrite_map import RewriteMap


def _case(seed: int, entries: int, buckets: int, select: float = 0.7,  # type: ignore[no-untyped-def]
          sources_only: bool = False):
    """An index of ``entries`` (key order = random locator order) over ``buckets`` buckets,
    with files: two compacted ones of bucket 0 and three sources (or five sources); about
    ``select`` of the entries are selected."""
    rng = np.random.default_rng(seed)
    ordinals = np.array([compacted(0, 1), compacted(0, 4), SOURCE_BASE, SOURCE_BASE + 1,
                         SOURCE_BASE + 5])
    if sources_only:
        ordinals = SOURCE_BASE + np.array([0, 1, 2, 4, 9])
    spans = rng.integers(entries // 3 + 1, entries + 2, len(ordinals))
    locators = np.unique(np.concatenate([
        np.stack([np.full(s, i), np.arange(s)]) for i, s in enumerate(spans)], axis=1).T, axis=0)
    chosen = locators[rng.choice(len(locators), entries, replace=False)]
    file = ordinals[chosen[:, 0]].astype(np.int32)
    row = chosen[:, 1].astype(np.int64)
    bounds = np.sort(np.r_[0, rng.integers(0, entries + 1, buckets - 1), entries])
    selected = rng.random(entries) < select
    return ordinals, spans, file, row, selected, bounds


def _map(ordinals, spans, file, row, selected, bounds) -> RewriteMap:  # type: ignore[no-untyped-def]
    """A map whose bucket i holds the entries at positions ``bounds[i]:bounds[i + 1]``."""
    return RewriteMap(ordinals, spans, file, row, selected,
                      lambda at: np.searchsorted(bounds, at, side="right") - 1, len(bounds) - 1)


def _expected(file, row, selected, bounds, group_of, bucket_ids, kept, rows_per_file):  # type: ignore[no-untyped-def]
    """Per bucket: its selected entries by (task, file, row); each task's rows cut into the
    fewest files of at most ``rows_per_file`` rows, all but the last of the even share."""
    new_file, new_row = file.copy(), row.copy()
    plans = []
    for i, b in enumerate(bucket_ids):
        at = np.arange(bounds[i], bounds[i + 1])
        at = at[selected[at]]
        at = at[np.lexsort((row[at], file[at]))]
        plans.append({int(f): row[at][file[at] == f].tolist() for f in np.unique(file[at])})
        task = np.array([group_of[int(f)] for f in file[at]], dtype=np.int64)
        next_file = kept[i]
        for g in range(max(group_of.values()) + 1):
            mine = at[task == g]
            rank = np.arange(len(mine))
            count = -(-len(mine) // rows_per_file)
            size = -(-len(mine) // count) if count else 1
            new_file[mine] = (b << 16) | (next_file + rank // size)
            new_row[mine] = rank % size
            next_file += count
    return new_file, new_row, plans


@pytest.mark.parametrize(("seed", "entries", "buckets", "rows_per_file"), [
    (0, 0, 1, 3), (1, 1, 1, 1), (2, 200, 1, 7), (3, 500, 3, 10), (4, 1000, 4, 1000),
])
def test_plans_and_places_match_a_sort_by_locator(seed: int, entries: int, buckets: int,
                                                  rows_per_file: int) -> None:
    _check(_case(seed, entries, buckets), buckets, rows_per_file)


@pytest.mark.parametrize("seed", range(3))
def test_places_beyond_32_bits_are_figured_in_64_to_the_same_places(
        monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """A task of 2**31 rows of a bucket is too big to build here: the threshold lowered to 0,
    every place goes the 64-bit way, to the places a sort gives."""
    from compactor.pipeline import rewrite_map

    monkeypatch.setattr(rewrite_map, "PLACES_32", 0)
    _check(_case(seed, 600, 3), 3, 7)


@pytest.mark.parametrize("seed", range(4))
def test_compacted_files_too_far_apart_for_a_table_are_found_by_search_to_the_same_places(
        monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Lost files of distant buckets of a big group span more ordinals than the lookup table
    takes: binary search must number them as the table does."""
    monkeypatch.setattr(rewrite_map, "MAX_SPAN", 2)  # the case's compacted files span 4
    _check(_case(seed, 400, 3), 3, 9)


@pytest.mark.parametrize("chunk", [3, 7, 64])
@pytest.mark.parametrize(("select", "sources_only"), [
    (1.0, True), (1.0, False), (0.97, True), (0.5, True)])
@pytest.mark.parametrize("buckets", [1, 3])
@pytest.mark.parametrize("cache_bytes", [rewrite_map.CACHE_BYTES, 200])
def test_whole_chunks_and_source_only_entries_take_the_fast_paths_to_the_same_places(
        monkeypatch: pytest.MonkeyPatch, chunk: int, select: float, sources_only: bool,
        buckets: int, cache_bytes: int) -> None:
    """A first round selects every entry, all of sources: chunks read as views and files
    found by one table lookup must place rows exactly as the general path does; so must
    chunks found again at relocation because they were beyond the bytes kept (200: some
    kept, most not)."""
    monkeypatch.setattr(rewrite_map, "CHUNK", chunk)
    monkeypatch.setattr(rewrite_map, "CACHE_BYTES", cache_bytes)
    for seed in range(5):
        _check(_case(seed, 300, buckets, select, sources_only), buckets, 11)


def _check(case, buckets: int, rows_per_file: int) -> None:  # type: ignore[no-untyped-def]
    ordinals, spans, file, row, selected, bounds = case
    group_of = {int(o): g for o, g in zip(ordinals, [0, 0, 1, 1, 2], strict=True)}
    bucket_ids = [3 + 2 * i for i in range(buckets)]
    kept = [i % 3 for i in range(buckets)]
    want_file, want_row, want_plans = _expected(file, row, selected, bounds, group_of,
                                                bucket_ids, kept, rows_per_file)
    rewrite = _map(ordinals, spans, file, row, selected, bounds)
    plans = [{f.ordinal: f.rows[i].array().tolist() for f in rewrite.files if i in f.rows}
             for i in range(buckets)]
    assert plans == want_plans
    assert [f.ordinal for f in rewrite.files] == sorted(f.ordinal for f in rewrite.files)
    total = rewrite.relocate(file, row, group_of, bucket_ids, kept, rows_per_file)
    assert file.tolist() == want_file.tolist()
    assert row.tolist() == want_row.tolist()
    assert total.tolist() == [max([kept[i]] + [(int(f) & 0xFFFF) + 1 for f in
                                               want_file[bounds[i]:bounds[i + 1]][
                                                   selected[bounds[i]:bounds[i + 1]]]])
                              for i in range(buckets)]


def test_repeated_or_unknown_locators_are_refused() -> None:
    ordinals, spans = np.array([SOURCE_BASE]), np.array([10])
    bounds = np.array([0, 3])
    with pytest.raises(ValueError, match="repeat"):
        _map(ordinals, spans, np.full(3, SOURCE_BASE, np.int32), np.array([1, 2, 1]),
                   np.ones(3, bool), bounds)
    with pytest.raises(ValueError, match="outside"):
        _map(ordinals, spans, np.array([SOURCE_BASE, SOURCE_BASE + 1, SOURCE_BASE],
                                             np.int32), np.array([1, 2, 3]), np.ones(3, bool),
                   bounds)
    with pytest.raises(ValueError, match="outside"):
        _map(ordinals, spans, np.full(3, SOURCE_BASE, np.int32), np.array([1, 2, 10]),
                   np.ones(3, bool), bounds)


def test_a_bucket_beyond_65536_files_is_refused() -> None:
    rewrite = _map(np.array([SOURCE_BASE]), np.array([5]),
                         np.full(5, SOURCE_BASE, np.int32), np.arange(5), np.ones(5, bool),
                         np.array([0, 5]))
    with pytest.raises(ValueError, match="bucket 9 would hold more than 65536 files"):
        rewrite.relocate(np.full(5, SOURCE_BASE, np.int32), np.arange(5), {SOURCE_BASE: 0},
                         [9], [65535], 1)


def test_member_matches_isin_for_narrow_and_wide_sets() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.integers(-1, 1 << 20, 5000), SOURCE_BASE + np.arange(50),
                             [np.iinfo(np.int32).max, np.iinfo(np.int32).min + 1]]
                            ).astype(np.int32)
    for of in (np.array([], np.int64), np.array([compacted(2, 5)]), rng.choice(values, 40),
               np.array([0, 1 << 21, SOURCE_BASE]), np.array([-1, 3]), rng.choice(values, 8),
               rng.choice(values, 9), np.array([7, 9, 7, 9, 7, 9, 7, 9, 5], np.int32)):
        assert member(values, of).tolist() == np.isin(values, of).tolist()


@pytest.mark.parametrize("bound", [1, 5, 32767, 32768, 1 << 40])
def test_stable_order_is_a_stable_sort_of_small_numbers_as_of_any(bound: int) -> None:
    rng = np.random.default_rng(bound % 1000)
    values = rng.integers(0, bound, 20_000, dtype=np.int64)
    values[:50] = bound - 1  # the largest, repeated (ties keep their order)
    assert locators.stable_order(values, bound).tolist() == \
        np.argsort(values, kind="stable").tolist()


@pytest.mark.parametrize("chunk", [3, 1 << 18])
@pytest.mark.parametrize("span", [1, 1 << 19])  # every set by search; narrow ones by a table
def test_find_in_gives_the_positions_and_set_index_a_naive_scan_does(
        monkeypatch: pytest.MonkeyPatch, chunk: int, span: int) -> None:
    """Sets at the ends of int32 (the unsigned range test wraps), with gaps in their range,
    of one value, empty; values below, inside and above them; chunks of 3 values and one."""
    monkeypatch.setattr(locators, "SCAN_CHUNK", chunk)
    monkeypatch.setattr(locators, "FIND_SPAN", span)
    rng = np.random.default_rng(11)
    top, bottom = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    values = np.concatenate([rng.integers(-3, 40, 300), [top, top - 1, bottom, bottom + 1],
                             SOURCE_BASE + rng.integers(-2, 6, 50)]).astype(np.int32)
    rng.shuffle(values)
    sets = [[], [5], [0, 1, 2], [-2, 7, 30], [top - 1, top], [bottom, bottom + 2],
            [3, SOURCE_BASE + 1], sorted(set(rng.integers(-3, 40, 12).tolist())), [-1]]
    for of in sets:
        of_array = np.array(of, dtype=np.int32)
        positions, which = locators.find_in(values, of_array)
        expected = [(i, of.index(v)) for i, v in enumerate(values.tolist()) if v in of]
        assert list(zip(positions.tolist(), which.tolist(), strict=True)) == expected, of


@pytest.mark.parametrize("case", ["one bucket", "several buckets", "far apart", "edges"])
def test_renumber_maps_exactly_the_old_ordinals_to_the_new(case: str) -> None:
    rng = np.random.default_rng(11)
    if case == "one bucket":  # kept files behind lost ones, moving up by one or two
        old = [compacted(3, i) for i in (4, 5, 6, 9, 10)]
        new = [compacted(3, i) for i in (3, 4, 5, 7, 8)]
    elif case == "several buckets":
        old = [compacted(b, i) for b in (1, 2, 40) for i in range(2, 30, 3)]
        new = [o - 1 for o in old]
    elif case == "far apart":  # beyond RENUMBER_SPAN: searched
        old = [compacted(1, 5), compacted(9000, 7)]
        new = [compacted(1, 4), compacted(9000, 0)]
    else:  # the first and last ordinals of a span, next to -1 and source ordinals
        old, new = [0, 1, 1 << 16], [5, 0, 7]
    pool = np.array(old + [o + d for o in old for d in (-1, 1)] + [-1, 0, SOURCE_BASE,
                    SOURCE_BASE + 3, np.iinfo(np.int32).max, np.iinfo(np.int32).min],
                    dtype=np.int64)
    values = rng.choice(pool, 3 * (1 << 18) + 17).astype(np.int32)  # several chunks and a part
    mapping = dict(zip(old, new, strict=True))
    expected = [mapping.get(v, v) for v in values.tolist()]
    renumber(values, np.array(old, np.int32), np.array(new, np.int32))
    assert values.tolist() == expected


def test_an_actor_names_the_partition_whose_bucket_would_hold_too_many_files(tmp_path) -> None:
    import pyarrow as pa

    from compactor.fs import Storage
    from compactor.merge import record_schema
    from compactor.pipeline.dedupe import DedupeActor
    from compactor.pipeline.hash_bucket import HashOutput

    n = 65537  # one row per file: one file more than a bucket can hold
    keys = np.sort(np.random.default_rng(3).choice(2**62, n, replace=False)).astype(np.uint64)
    records = pa.table({"hi": keys, "lo": keys, "row": np.arange(n, dtype=np.int32),
                        "op": np.zeros(n, np.int8)},
                       schema=pa.schema([f for f in record_schema()
                                         if f.name not in ("pos", "file")]))
    actor = DedupeActor(Storage(f"file://{tmp_path}"), "partitions/day=1", [0], 1, None)
    actor.merge(None, None, {}, 0, [HashOutput({0: records}, n, 0, 1, SOURCE_BASE)])
    with pytest.raises(ValueError, match=f"partition file://{tmp_path}/partitions/day=1: "
                                         "bucket 0 would hold more than 65536 files"):
        actor.finalize([[SOURCE_BASE]], 1)
    assert not list(tmp_path.rglob("*.arrow"))  # no index written


def test_an_actor_asked_for_plans_without_a_folded_round_says_to_rerun(tmp_path) -> None:
    from compactor.fs import Storage
    from compactor.pipeline.dedupe import DedupeActor

    actor = DedupeActor(Storage(f"file://{tmp_path}"), "partitions/day=1", [2, 3], 4, None)
    with pytest.raises(RuntimeError, match=r"buckets 2-3 holds no folded round .* run the round "
                                           r"again") as failure:
        actor.plan()
    import runtime  # retried as a lost actor (jobs retry those), and the partition is named

    assert isinstance(failure.value, runtime.ActorDiedError)
    assert f"partition file://{tmp_path}/partitions/day=1:" in str(failure.value)


def test_an_actor_asked_to_finalize_without_a_planned_round_says_to_rerun(tmp_path) -> None:
    """A restarted actor (Ray restarts one killed between plan and finalize) fails finalize as
    a lost actor, which jobs retry, not with a bare AssertionError."""
    import runtime
    from compactor.fs import Storage
    from compactor.pipeline.dedupe import DedupeActor

    actor = DedupeActor(Storage(f"file://{tmp_path}"), "partitions/day=1", [2, 3], 4, None)
    with pytest.raises(runtime.ActorDiedError,
                       match=f"partition file://{tmp_path}/partitions/day=1: .* buckets 2-3 "
                             "holds no planned round .* run the round again"):
        actor.finalize([[SOURCE_BASE]], 100)


def test_relocation_happens_once_and_every_file_with_rows_has_a_task() -> None:
    ordinals, spans, file, row, selected, bounds = _case(5, 300, 2)
    group_of = {int(o): g for o, g in zip(ordinals, [0, 0, 1, 1, 2], strict=True)}
    del group_of[int(ordinals[3])]  # a file with rows to rewrite that no task writes
    with pytest.raises(ValueError, match=f"files \\[{int(ordinals[3])}\\] hold rows to rewrite "
                                         "but no task writes them"):
        _map(ordinals, spans, file, row, selected, bounds).relocate(
            file.copy(), row.copy(), group_of, [0, 1], [0, 0], 10)
    group_of[int(ordinals[3])] = 1
    rewrite = _map(ordinals, spans, file, row, selected, bounds)
    rewrite.relocate(file, row, group_of, [0, 1], [0, 0], 10)
    with pytest.raises(ValueError, match="relocated its entries already"):
        rewrite.relocate(file, row, group_of, [0, 1], [0, 0], 10)


def _complement_case(seed: int, more: int = 0):  # type: ignore[no-untyped-def]
    """Bucket 3's index after an incremental fold: compacted files 0 and 2 (of 50 and 40
    rows) lost some rows, whose keys' entries now point at rows of a source; file 1 (kept)
    and every other row of files 0 and 2 keep one entry per row. Entries in random order.
    ``more``: that many more files (3, 4, ...) of 20 rows lost rows too."""
    rng = np.random.default_rng(seed)
    sizes = {compacted(3, 0): 50, compacted(3, 1): 30, compacted(3, 2): 40}
    sizes.update({compacted(3, 3 + k): 20 for k in range(more)})
    lost = {o: np.sort(rng.choice(n, rng.integers(0, n // 2), replace=False))
            for o, n in sizes.items() if o != compacted(3, 1)}
    lost[compacted(3, 2)] = np.union1d(lost[compacted(3, 2)], [0, 39])
    file, row = [], []
    for o, n in sizes.items():
        keep = np.setdiff1d(np.arange(n), lost.get(o, []))
        file += [o] * len(keep)
        row += keep.tolist()
    entered = sum(len(r) for r in lost.values()) + 3  # and three new keys
    file += [SOURCE_BASE] * entered
    row += rng.choice(entered + 60, entered, replace=False).tolist()
    order = rng.permutation(len(file))
    file = np.array(file, dtype=np.int32)[order]
    row = np.array(row, dtype=np.int32)[order]
    ordinals = np.array([*sorted(lost), SOURCE_BASE])
    spans = np.array([sizes[o] for o in sorted(lost)] + [entered + 60])
    return file, row, lost, ordinals, spans


@pytest.mark.parametrize(("seed", "more"), [(s, 0) for s in range(6)] + [(6, 7), (7, 12)])
def test_files_given_by_the_rows_they_lost_place_rows_as_if_their_entries_were_selected(
        seed: int, more: int) -> None:
    """(Up to 8 files are found by a compare each, more in one pass and split by a sort.)"""
    file, row, lost, ordinals, spans = _complement_case(seed, more)
    bounds = np.array([0, len(file)])
    selected = member(file, ordinals.astype(np.int32))
    whole = _map(ordinals, spans, file.copy(), row.copy(), selected, bounds)
    sources = np.flatnonzero(file >= SOURCE_BASE)
    given = RewriteMap(ordinals, spans, file, row, sources, lambda at: 0, 1,
                       {o: (0, r) for o, r in lost.items()})
    assert [(f.ordinal, f.rows[0].array().tolist()) for f in given.files] == \
        [(f.ordinal, f.rows[0].array().tolist()) for f in whole.files]
    want_file, want_row = file.copy(), row.copy()
    group_of = {int(o): min(k, 1) for k, o in enumerate(ordinals)}
    total = whole.relocate(want_file, want_row, group_of, [3], [1], 7)
    assert given.relocate(file, row, group_of, [3], [1], 7).tolist() == total.tolist()
    assert file.tolist() == want_file.tolist() and row.tolist() == want_row.tolist()
    placed = [(o, first, slot, rows.tolist(), n) for o, first, slot, rows, n in given.placed(0, 3)]
    assert placed == [(o, first, slot, rows.tolist(), n)
                      for o, first, slot, rows, n in whole.placed(0, 3)]


@pytest.mark.parametrize("damage", ["an entry at a lost row", "a row without an entry",
                                    "two entries of one row"])
def test_files_given_by_their_lost_rows_refuse_entries_not_one_per_kept_row(damage: str
                                                                             ) -> None:
    file, row, lost, ordinals, spans = _complement_case(1)
    o = compacted(3, 0)
    mine = np.flatnonzero(file == o)
    if damage == "an entry at a lost row":
        row[mine[0]] = lost[o][0]
    elif damage == "a row without an entry":
        file[mine[0]] = compacted(3, 1)
    else:
        row[mine[0]] = row[mine[1]]
    given = RewriteMap(ordinals, spans, file, row, np.flatnonzero(file >= SOURCE_BASE),
                       lambda at: 0, 1, {o: (0, r) for o, r in lost.items()})
    with pytest.raises(ValueError, match="not one per row it keeps"):
        given.relocate(file, row, {int(o): 0 for o in ordinals}, [3], [1], 7)
    with pytest.raises(ValueError, match="fall outside"):
        RewriteMap(ordinals, spans, file, row, np.flatnonzero(file >= SOURCE_BASE),
                   lambda at: 0, 1, {o: (0, np.array([50]))})
