"""An independent oracle for compaction: the expected current state, computed by DuckDB.

``expected_state`` restates the merge semantics of DESIGN.md in SQL, with no compactor code: every
row of every delta gets its stream position and its row number within the delta, and per key the
row with the greatest (ordering column, stream position, row number) wins; if it is a delete, the
key is absent. ``ORDER BY ... DESC NULLS LAST`` makes a null ordering value the lowest; DuckDB
ranks NaN above every number and -0.0 equal to 0.0, which is the rule compactor documents.

A delta is one table in stream order: its position is its index in the list and its rows are in
file order, then row order, so the row number within the delta orders both. DELETE deltas carry
only keys (and the ordering value, if they have one; without it their ordering value is null).
Columns that later deltas add are null in older rows; types widen as Arrow's permissive schema
unification allows, and anything else is an error.

``assert_tables_equal`` compares two tables row for row after sorting by key, and on failure
says which keys are missing or extra and how the first differing rows differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("upsert", "delete", "cdc")
DEFAULT_OP_MAP: Mapping[str, str] = {"I": "upsert", "U": "upsert", "D": "delete"}
_POS, _ROW, _DELETE, _RANK = "__oracle_pos", "__oracle_row", "__oracle_delete", "__oracle_rank"


def _names(key: str | Sequence[str]) -> list[str]:
    return [key] if isinstance(key, str) else list(key)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _delete_flags(i: int, table: pa.Table, op_column: str, op_map: Mapping[str, str]) -> pa.Array:
    if op_column not in table.column_names:
        raise ValueError(f"delta {i} (cdc) has no op column {op_column!r}")
    unknown = set(op_map.values()) - {"upsert", "delete"}
    if unknown:
        raise ValueError(f"op_map values must be 'upsert' or 'delete', not {sorted(unknown)}")
    ops = table.column(op_column)
    if pa.types.is_dictionary(ops.type):  # (categorical op columns: their values count)
        ops = ops.cast(ops.type.value_type)
    known = pc.fill_null(pc.is_in(ops, pa.array(list(op_map), ops.type)), False)
    if not pc.all(known, min_count=0).as_py():
        row = pc.index(known, False).as_py()
        raise ValueError(f"delta {i} row {row}: op {ops[row].as_py()!r} is not in {dict(op_map)}")
    deletes = [op for op, kind in op_map.items() if kind == "delete"]
    return pc.is_in(ops, pa.array(deletes, ops.type))


def _prepared(i: int, kind: str, table: pa.Table, key: list[str], order_by: str | None,
              op_column: str, op_map: Mapping[str, str], keep_op_column: bool) -> pa.Table:
    """The delta with its position, row numbers and delete flag, and only its output columns."""
    if kind not in KINDS:
        raise ValueError(f"delta {i}: kind {kind!r} is not one of {KINDS}")
    missing = [k for k in key if k not in table.column_names]
    if missing:
        raise ValueError(f"delta {i}: no key column(s) {missing}")
    for k in key:
        if table.column(k).null_count:
            row = pc.index(table.column(k).is_null(), True).as_py()
            raise ValueError(f"delta {i} row {row}: null in key column {k!r}")
    n = table.num_rows
    if kind == "cdc":
        flags = _delete_flags(i, table, op_column, op_map)
        if not keep_op_column:
            table = table.drop_columns([op_column])
    else:
        flags = pa.array([kind == "delete"] * n, pa.bool_())
    if kind == "delete":
        table = table.select([c for c in table.column_names if c in (*key, order_by)])
    return (table.append_column(_POS, pa.array([i] * n, pa.int64()))
                 .append_column(_ROW, pa.array(range(n), pa.int64()))
                 .append_column(_DELETE, flags))


def expected_state(
    deltas: Sequence[tuple[str, pa.Table]],
    primary_key: str | Sequence[str],
    order_by: str | None = None,
    *,
    op_column: str = "op",
    op_map: Mapping[str, str] = DEFAULT_OP_MAP,
    keep_op_column: bool = False,
) -> pa.Table:
    """The current state after ``deltas`` ((kind, table) in stream order), sorted by key."""
    key = _names(primary_key)
    if not deltas:
        raise ValueError("no deltas: the schema of the state is unknown")
    tables = [_prepared(i, kind, table, key, order_by, op_column, op_map, keep_op_column)
              for i, (kind, table) in enumerate(deltas)]
    try:
        schema = pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"deltas have incompatible schemas: {exc}") from exc
    db = duckdb.connect()
    for i, table in enumerate(tables):
        db.register(f"delta_{i}", table)
    union = " UNION ALL BY NAME ".join(f"SELECT * FROM delta_{i}" for i in range(len(tables)))
    order = [f"{_quote(order_by)} DESC NULLS LAST"] if order_by is not None else []
    window = ", ".join([*order, f"{_POS} DESC", f"{_ROW} DESC"])
    keys = ", ".join(_quote(k) for k in key)
    result = db.sql(f"""
        SELECT * EXCLUDE ({_POS}, {_ROW}, {_DELETE}, {_RANK}) FROM (
            SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY {window}) AS {_RANK}
            FROM ({union})
        )
        WHERE {_RANK} = 1 AND NOT {_DELETE}
        ORDER BY {keys}
    """).to_arrow_table()
    output = pa.schema([f for f in schema if f.name not in (_POS, _ROW, _DELETE)])
    return result.select(output.names).cast(output)


# --- comparison ---------------------------------------------------------------------------------


def _differs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Per row: do a and b differ? Nulls equal nulls and NaN equals NaN."""
    try:
        same = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(a.is_null(), b.is_null()))
        if pa.types.is_floating(a.type):
            same = pc.or_(same, pc.fill_null(pc.and_(pc.is_nan(a), pc.is_nan(b)), False))
        return pc.invert(same)
    except pa.ArrowNotImplementedError:  # nested types: compare as Python values
        return pa.chunked_array(
            [pa.array([x != y for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True)],
                      pa.bool_())])


def _keys(table: pa.Table, key: list[str], limit: int) -> list[tuple[object, ...]]:
    first = table.select(key).sort_by([(k, "ascending") for k in key]).slice(0, limit)
    return [tuple(row.values()) for row in first.to_pylist()]


def _key_problems(actual: pa.Table, expected: pa.Table, key: list[str], limit: int) -> list[str]:
    problems = []
    for name, table in (("actual", actual), ("expected", expected)):
        counts = table.group_by(key).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts["count_all"], 1))
        if repeated.num_rows:
            problems.append(f"{name} repeats {repeated.num_rows} key(s), e.g. "
                            f"{_keys(repeated, key, limit)}")
    for name, this, other in (("actual", actual, expected), ("expected", expected, actual)):
        extra = this.select(key).join(other.select(key), keys=key, join_type="left anti")
        if extra.num_rows:
            problems.append(f"{extra.num_rows} key(s) only in {name}, e.g. "
                            f"{_keys(extra, key, limit)}")
    return problems


def _row_problems(actual: pa.Table, expected: pa.Table, key: list[str], limit: int) -> list[str]:
    """Both tables hold the same keys once each: the first rows whose values differ."""
    order = [(k, "ascending") for k in key]
    a, e = actual.sort_by(order), expected.sort_by(order)
    differs = {name: _differs(a.column(name), e.column(name)) for name in e.column_names}
    any_differs = differs[e.column_names[0]]
    for mask in differs.values():
        any_differs = pc.or_(any_differs, mask)
    rows = pc.indices_nonzero(any_differs).to_pylist()
    problems = [f"{len(rows)} of {e.num_rows} rows differ"] if rows else []
    for i in rows[:limit]:
        row_a, row_e = a.slice(i, 1).to_pylist()[0], e.slice(i, 1).to_pylist()[0]
        values = ", ".join(f"{c}: actual {row_a[c]!r} != expected {row_e[c]!r}"
                           for c, mask in differs.items() if mask[i].as_py())
        problems.append(f"key {tuple(row_e[k] for k in key)}: {values}")
    return problems


def assert_tables_equal(
    actual: pa.Table,
    expected: pa.Table,
    key: str | Sequence[str],
    *,
    check_types: bool = True,
    max_report: int = 5,
) -> None:
    """Assert equal rows after sorting by ``key``; column order is ignored.

    With ``check_types=False`` the actual table is cast to the expected types first.
    """
    key = _names(key)
    only_actual = sorted(set(actual.column_names) - set(expected.column_names))
    only_expected = sorted(set(expected.column_names) - set(actual.column_names))
    if only_actual or only_expected:
        raise AssertionError(f"columns differ: only in actual {only_actual}, "
                             f"only in expected {only_expected}")
    actual = actual.select(expected.column_names)
    if check_types:
        mismatched = [f"{e.name}: actual {a.type}, expected {e.type}"
                      for a, e in zip(actual.schema, expected.schema, strict=True)
                      if a.type != e.type]
        if mismatched:
            raise AssertionError("column types differ: " + "; ".join(mismatched))
    else:
        actual = actual.cast(expected.schema)
    problems = _key_problems(actual, expected, key, max_report)
    if not problems:
        problems = _row_problems(actual, expected, key, max_report)
    if problems:
        raise AssertionError(
            f"tables differ (key {key}; actual {actual.num_rows} rows, expected "
            f"{expected.num_rows}):\n  " + "\n  ".join(problems)
        )
