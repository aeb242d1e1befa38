"""The oracle on cases small enough to check by eye: each test is one sentence of the semantics."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracle import assert_tables_equal, expected_state


def rows(state: pa.Table) -> list[dict[str, object]]:
    return list(state.to_pylist())


def test_the_last_row_of_a_key_wins_within_a_delta_and_across_deltas() -> None:
    state = expected_state([
        ("upsert", pa.table({"id": [1, 2, 1], "v": ["a", "b", "c"]})),
        ("upsert", pa.table({"id": [2], "v": ["d"]})),
    ], "id")
    assert rows(state) == [{"id": 1, "v": "c"}, {"id": 2, "v": "d"}]


def test_deletes_remove_keys_ignore_absent_ones_and_allow_reinsert() -> None:
    state = expected_state([
        ("upsert", pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"]})),
        ("delete", pa.table({"id": [2, 3, 99]})),
        ("upsert", pa.table({"id": [3], "v": ["again"]})),
    ], "id")
    assert rows(state) == [{"id": 1, "v": "a"}, {"id": 3, "v": "again"}]


def test_ordering_column_beats_arrival_and_ties_fall_back_to_position() -> None:
    state = expected_state([
        ("upsert", pa.table({"id": [1, 2, 3], "lsn": [10, 5, 7], "v": ["new", "x", "first"]})),
        ("upsert", pa.table({"id": [1, 2, 3], "lsn": [9, 6, 7], "v": ["old", "y", "second"]})),
    ], "id", order_by="lsn")
    assert [r["v"] for r in rows(state)] == ["new", "y", "second"]


def test_null_ordering_value_is_lowest_and_nan_highest() -> None:
    state = expected_state([
        ("upsert", pa.table({"id": [1, 2], "t": [1.0, math.inf], "v": ["one", "inf"]})),
        ("upsert", pa.table({"id": [1, 2], "t": [None, math.nan], "v": ["null", "nan"]})),
    ], "id", order_by="t")
    assert [r["v"] for r in rows(state)] == ["one", "nan"]


def test_a_keys_only_delete_has_a_null_ordering_value_and_loses_to_ordered_rows() -> None:
    state = expected_state([
        ("upsert", pa.table({"id": [1], "lsn": [10], "v": ["kept"]})),
        ("delete", pa.table({"id": [1]})),
    ], "id", order_by="lsn")
    assert rows(state) == [{"id": 1, "lsn": 10, "v": "kept"}]
    state = expected_state([
        ("upsert", pa.table({"id": [1], "lsn": [10], "v": ["gone"]})),
        ("delete", pa.table({"id": [1], "lsn": [11]})),
        ("upsert", pa.table({"id": [1], "lsn": [10], "v": ["late, older"]})),
    ], "id", order_by="lsn")
    assert rows(state) == []


def test_cdc_ops_map_rows_to_upserts_and_deletes() -> None:
    state = expected_state([
        ("cdc", pa.table({"Op": ["I", "I", "U", "D"], "id": [1, 2, 1, 2],
                          "v": ["a", "b", "c", None]})),
    ], "id", op_column="Op")
    assert rows(state) == [{"id": 1, "v": "c"}]
    custom = expected_state(
        [("cdc", pa.table({"kind": ["ins", "del"], "id": [1, 1], "v": ["a", None]}))], "id",
        op_column="kind", op_map={"ins": "upsert", "del": "delete"}, keep_op_column=True)
    assert rows(custom) == []
    kept = expected_state([("cdc", pa.table({"op": ["I"], "id": [1]}))], "id", keep_op_column=True)
    assert rows(kept) == [{"op": "I", "id": 1}]
    categorical = expected_state([("cdc", pa.table({
        "Op": pa.array(["I", "I", "U", "D"]).dictionary_encode(), "id": [1, 2, 1, 2],
        "v": ["a", "b", "c", None]}))], "id", op_column="Op")
    assert rows(categorical) == [{"id": 1, "v": "c"}]


def test_unknown_cdc_op_names_the_delta_and_row() -> None:
    with pytest.raises(ValueError, match=r"delta 1 row 2: op 'X' is not in"):
        expected_state([
            ("upsert", pa.table({"id": [1]})),
            ("cdc", pa.table({"op": ["I", "D", "X"], "id": [1, 2, 3]})),
        ], "id")


def test_columns_added_later_are_null_in_older_rows_and_types_widen() -> None:
    state = expected_state([
        ("upsert", pa.table({"id": pa.array([1, 2], pa.int32()), "v": ["a", "b"]})),
        ("upsert", pa.table({"id": pa.array([2], pa.int64()), "v": ["c"], "extra": [True]})),
    ], "id")
    assert state.schema == pa.schema([("id", pa.int64()), ("v", pa.string()),
                                      ("extra", pa.bool_())])
    assert rows(state) == [{"id": 1, "v": "a", "extra": None}, {"id": 2, "v": "c", "extra": True}]


def test_incompatible_types_and_null_keys_are_errors() -> None:
    with pytest.raises(ValueError, match="incompatible schemas"):
        expected_state([("upsert", pa.table({"id": [1]})),
                        ("upsert", pa.table({"id": ["1"]}))], "id")
    with pytest.raises(ValueError, match=r"delta 0 row 1: null in key column 'id'"):
        expected_state([("upsert", pa.table({"id": [1, None]}))], "id")
    with pytest.raises(ValueError, match="kind 'merge'"):
        expected_state([("merge", pa.table({"id": [1]}))], "id")


def test_composite_string_keys_are_compared_whole_and_output_is_sorted() -> None:
    state = expected_state([
        ("upsert", pa.table({"a": ["x", "x", "w"], "b": ["ab", "a", "z"], "v": [1, 2, 3]})),
        ("delete", pa.table({"a": ["x"], "b": ["a"]})),
        ("upsert", pa.table({"a": ["x"], "b": ["ab"], "v": [4]})),
    ], ["a", "b"])
    assert rows(state) == [{"a": "w", "b": "z", "v": 3}, {"a": "x", "b": "ab", "v": 4}]


# --- against a plain Python model --------------------------------------------------------------


def _model(deltas: list[tuple[str, list[tuple[int, int | None, str | None, str]]]]
           ) -> list[dict[str, object]]:
    """Latest row per key by (order, position, row); null order lowest; deletes drop the key."""
    best: dict[int, tuple[tuple[object, ...], dict[str, object] | None]] = {}
    for position, (_, rows_) in enumerate(deltas):
        for number, (key, lsn, value, op) in enumerate(rows_):
            version: tuple[object, ...] = ((0,) if lsn is None else (1, lsn), position, number)
            if key not in best or version > best[key][0]:
                row: dict[str, object] | None = (
                    None if op == "D" else {"id": key, "lsn": lsn, "v": value})
                best[key] = (version, row)
    return [row for _, (_, row) in sorted(best.items()) if row is not None]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["upsert", "delete", "cdc"]),
    st.lists(st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(0, 3)),
                       st.one_of(st.none(), st.text(max_size=2)), st.sampled_from("IUD")),
             max_size=8)), min_size=1, max_size=5))
def test_oracle_matches_a_python_model(
    deltas: list[tuple[str, list[tuple[int, int | None, str | None, str]]]]
) -> None:
    tables = []
    for kind, rows_ in deltas:
        columns = {"id": pa.array([r[0] for r in rows_], pa.int64()),
                   "lsn": pa.array([r[1] for r in rows_], pa.int64()),
                   "v": pa.array([r[2] for r in rows_], pa.string())}
        if kind == "cdc":
            columns["op"] = pa.array([r[3] for r in rows_], pa.string())
        tables.append((kind, pa.table(columns)))
    model = _model([(kind, [(k, lsn, v, {"upsert": "I", "delete": "D"}.get(kind, op))
                            for k, lsn, v, op in rows_]) for kind, rows_ in deltas])
    assert rows(expected_state(tables, "id", order_by="lsn")) == model


# --- assert_tables_equal ------------------------------------------------------------------------

EXPECTED = pa.table({"id": [1, 2, 3], "v": ["a", "b", None], "f": [1.0, math.nan, 0.0]})


def test_equal_tables_in_any_row_and_column_order() -> None:
    shuffled = EXPECTED.take([2, 0, 1]).select(["f", "v", "id"])
    assert_tables_equal(shuffled, EXPECTED, "id")


def test_differences_are_reported_by_key_and_column() -> None:
    changed = pa.table({"id": [1, 2, 3], "v": ["a", "B", "c"], "f": [1.0, math.nan, 0.0]})
    with pytest.raises(AssertionError) as info:
        assert_tables_equal(changed, EXPECTED, "id")
    message = str(info.value)
    assert "2 of 3 rows differ" in message
    assert "key (2,): v: actual 'B' != expected 'b'" in message
    assert "key (3,): v: actual 'c' != expected None" in message


def test_missing_extra_and_repeated_keys_are_reported() -> None:
    other = pa.table({"id": [1, 1, 4], "v": ["a", "a", "d"], "f": [1.0, 1.0, 4.0]})
    with pytest.raises(AssertionError) as info:
        assert_tables_equal(other, EXPECTED, "id")
    message = str(info.value)
    assert "actual repeats 1 key(s), e.g. [(1,)]" in message
    assert "1 key(s) only in actual, e.g. [(4,)]" in message
    assert "2 key(s) only in expected, e.g. [(2,), (3,)]" in message


def test_schema_differences_are_reported() -> None:
    with pytest.raises(AssertionError, match=r"only in actual \['w'\], only in expected \['f'\]"):
        assert_tables_equal(EXPECTED.drop_columns(["f"]).append_column("w", pa.array([1, 2, 3])),
                            EXPECTED, "id")
    narrow = EXPECTED.set_column(0, "id", EXPECTED.column("id").cast(pa.int32()))
    with pytest.raises(AssertionError, match="id: actual int32, expected int64"):
        assert_tables_equal(narrow, EXPECTED, "id")
    assert_tables_equal(narrow, EXPECTED, "id", check_types=False)
