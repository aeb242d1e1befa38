"""A partition's expected current state, recomputed by DuckDB straight from its delta files.

This is ``compactor verify``'s independent engine: it shares no code with the pipeline (no key
hashing, no index, no materialize). It reads every delta's Parquet files itself and applies the
merge contract of DESIGN.md in SQL::

    per primary key (compared by value), the winner is the row with the greatest
        (ordering column, nulls lowest; stream position; file order in the delta; row order)
    and a winning delete (a DELETE delta's row, or a CDC row whose op maps to delete) removes
    the key.

Columns a file lacks are null; every column is cast to the table's type. The result is then
compared with the compacted state, row by row, by key.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from compactor.errors import CompactorError

if TYPE_CHECKING:
    from compactor import DataFile, Delta, Table

_FILES_PER_STATEMENT = 100
_VERIFY_THREADS = 16


def _name(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Difference:
    """One key whose compacted row is not the expected one."""

    kind: str  # missing | unexpected | changed | duplicate
    key: dict[str, Any]
    columns: tuple[str, ...] = ()  # changed: the columns that differ
    expected: dict[str, Any] = field(default_factory=dict)
    actual: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    expected_rows: int
    actual_rows: int
    missing: int  # keys expected but absent
    unexpected: int  # keys present but not expected (e.g. deleted)
    changed: int  # keys present with other values
    duplicates: int  # keys present more than once
    differences: tuple[Difference, ...]  # the first few of each kind

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.changed or self.duplicates)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class NotVerifiable(CompactorError, ValueError):
    """The table has a column whose values DuckDB (verify's engine) cannot hold exactly."""


class _Unheld(Exception):
    """A type DuckDB has no type for the values of."""


def _duckdb_type(t: pa.DataType) -> pa.DataType:
    """``t`` as DuckDB takes Arrow data: the same values in a type it has (it takes neither
    256-bit decimals nor half floats); _Unheld where it has none."""
    if pa.types.is_decimal256(t):
        if t.precision > 38:
            raise _Unheld(t)
        return pa.decimal128(t.precision, t.scale)
    if pa.types.is_float16(t):
        return pa.float32()
    list_view = getattr(pa.types, "is_list_view", lambda _: False)(t)  # (pyarrow 16 on)
    if list_view or getattr(pa.types, "is_large_list_view", lambda _: False)(t):
        value = t.value_field.with_type(_duckdb_type(t.value_type))  # (as lists: same values)
        return pa.list_(value) if list_view else pa.large_list(value)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        value = t.value_field.with_type(_duckdb_type(t.value_type))
        return pa.list_(value) if pa.types.is_list(t) else pa.large_list(value) \
            if pa.types.is_large_list(t) else pa.list_(value, t.list_size)
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_duckdb_type(t.key_type)),
                       t.item_field.with_type(_duckdb_type(t.item_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_duckdb_type(f.type)) for f in t])
    return t


def _for_duckdb(schema: pa.Schema, where: str) -> pa.Schema:
    """``schema`` in types DuckDB holds the same values in, or NotVerifiable naming the
    column (of ``where``, the table)."""
    fields = []
    for f in schema:
        try:
            fields.append(f.with_type(_duckdb_type(f.type)))
        except _Unheld as e:
            raise NotVerifiable(
                f"{where}: column {f.name!r} has type {f.type}: verify recomputes the state "
                f"with DuckDB, which has no type for {e.args[0]} (its decimals hold at most 38 "
                "digits)") from None
    return pa.schema(fields)


def _cast_for_duckdb(table: pa.Table, where: str) -> pa.Table:
    schema = _for_duckdb(table.schema, where)
    try:
        return table.cast(schema)
    except pa.ArrowNotImplementedError as e:  # (half floats cast from Arrow 16 on)
        raise NotVerifiable(f"{where}: verify cannot give DuckDB the compacted rows as "
                            f"{schema}: {e}") from None


class ExpectedState:
    """The expected state of one partition of ``table``, in an in-memory DuckDB database."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.con = duckdb.connect()
        self._local = table.storage.protocol in ("file", "local")
        if not self._local:
            self.con.register_filesystem(table.storage.fs)
        self.con.register("__table_schema",
                          _for_duckdb(table.schema, f"table {table.url}").empty_table())
        self.types = {row[0]: row[1]
                      for row in self._run("DESCRIBE __table_schema")}
        self.key = list(table.primary_key)
        self.columns = list(table.schema.names)

    def _location(self, file: DataFile) -> str:
        if self._local:
            path = self.table.storage.strip(file.url)
            assert path is not None
            return path
        return file.url

    def _cast(self, column: str, present: bool) -> str:
        value = _name(column) if present else "NULL"
        return f"CAST({value} AS {self.types[column]}) AS {_name(column)}"

    def _select(self, delta: Delta, ordinal: int, file: DataFile) -> str:
        from compactor import DeltaKind

        source = f"read_parquet({_literal(self._location(file))}, file_row_number = true)"
        present = {row[0] for row in
                   self._run(f"DESCRIBE SELECT * FROM {source}")}
        if delta.kind is DeltaKind.DELETE:
            present &= {*self.key, self.table.ordering_column}
        values = [self._cast(c, c in present) for c in self.columns]
        order = self.table.ordering_column
        values.append(f"CAST({_name(order)} AS {self.types[order]}) AS __ord" if order
                      else "0 AS __ord")
        if delta.kind is DeltaKind.UPSERT:
            deleted = "FALSE"
        elif delta.kind is DeltaKind.DELETE:
            deleted = "TRUE"
        else:
            assert delta.cdc is not None
            op = _name(delta.cdc.column)
            upsert = ", ".join(map(_literal, delta.cdc.upsert))
            delete = ", ".join(map(_literal, delta.cdc.delete))
            unknown = _literal(f"file {file.url}: unknown op in column {delta.cdc.column}")
            deleted = (f"CASE WHEN {op} IN ({upsert}) THEN FALSE WHEN {op} IN ({delete}) "
                       f"THEN TRUE ELSE error({unknown}) END")
        values += [f"{delta.position} AS __pos", f"{ordinal} AS __file",
                   "file_row_number AS __row", f"{deleted} AS __del"]
        return f"SELECT {', '.join(values)} FROM {source}"

    def load(self, deltas: Sequence[Delta]) -> int:
        """Fold ``deltas`` (every delta up to the high watermark) into table ``expected``;
        returns its row count. Each file is first checked unchanged since it was committed."""
        items = [(d, i, f) for d in deltas for i, f in enumerate(d.files)]
        with ThreadPoolExecutor(_VERIFY_THREADS) as pool:
            list(pool.map(self.table.verify_file, (f for _, _, f in items)))
        empty = ", ".join(self._cast(c, False) for c in self.columns)
        self._run(f"CREATE TEMP TABLE __rows AS SELECT {empty}, 0 AS __ord, "
                         "0::BIGINT AS __pos, 0 AS __file, 0::BIGINT AS __row, FALSE AS __del "
                         "LIMIT 0")
        if self.table.ordering_column:  # __ord takes the ordering column's type
            self._run("ALTER TABLE __rows ALTER __ord TYPE "
                             f"{self.types[self.table.ordering_column]}")
        for start in range(0, len(items), _FILES_PER_STATEMENT):
            selects = [self._select(*item) for item in items[start:start + _FILES_PER_STATEMENT]]
            self._run("INSERT INTO __rows " + " UNION ALL ".join(selects))
        keys = ", ".join(map(_name, self.key))
        columns = ", ".join(map(_name, self.columns))
        self._run(
            f"CREATE TEMP TABLE expected AS SELECT {columns} FROM ("
            f"  SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY __ord DESC NULLS LAST,"
            f"    __pos DESC, __file DESC, __row DESC) AS __rank FROM __rows"
            f") WHERE __rank = 1 AND NOT __del")
        self._run("DROP TABLE __rows")
        return self._count("expected")

    def _run(self, sql: str) -> list[tuple[Any, ...]]:
        # DuckDB wants each result fetched to the end before the connection does other work
        return self.con.execute(sql).fetchall()

    def _count(self, relation: str) -> int:
        return int(self._run(f"SELECT count(*) FROM {relation}")[0][0])

    def _rows(self, query: str, limit: int) -> list[dict[str, Any]]:
        cursor = self.con.execute(f"{query} LIMIT {limit}")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def compare(self, actual: pa.Table, limit: int = 20) -> Comparison:
        """Compare table ``expected`` (see :meth:`load`) with ``actual``, the compacted rows."""
        self.con.register("__actual_arrow", _cast_for_duckdb(actual, f"table {self.table.url}"))
        casts = ", ".join(self._cast(c, c in actual.column_names) for c in self.columns)
        self._run(f"CREATE OR REPLACE TEMP TABLE actual AS SELECT {casts} "
                         "FROM __actual_arrow")
        keys = ", ".join(map(_name, self.key))
        others = [c for c in self.columns if c not in self.key]

        def key_of(row: dict[str, Any]) -> dict[str, Any]:
            return {k: row[k] for k in self.key}

        duplicates = f"SELECT {keys}, count(*) AS copies FROM actual GROUP BY {keys} " \
                     "HAVING count(*) > 1"
        missing = f"SELECT * FROM expected ANTI JOIN actual USING ({keys})"
        unexpected = f"SELECT * FROM actual ANTI JOIN expected USING ({keys})"
        differs = [f"e.{_name(c)} IS DISTINCT FROM a.{_name(c)}" for c in others]
        picks = [f"e.{_name(c)} AS {_name('e.' + c)}, a.{_name(c)} AS {_name('a.' + c)}, "
                 f"({d}) AS {_name('d.' + c)}" for c, d in zip(others, differs, strict=True)]
        changed = (f"SELECT {', '.join([keys, *picks])} FROM expected e JOIN actual a "
                   f"USING ({keys}) WHERE {' OR '.join(differs)}" if others
                   else f"SELECT {keys} FROM expected LIMIT 0")

        found: list[Difference] = []
        for row in self._rows(duplicates, limit):
            found.append(Difference("duplicate", key_of(row),
                                    actual={"copies": row["copies"]}))
        for row in self._rows(missing, limit):
            found.append(Difference("missing", key_of(row), expected=row))
        for row in self._rows(unexpected, limit):
            found.append(Difference("unexpected", key_of(row), actual=row))
        for row in self._rows(changed, limit):
            columns = tuple(c for c in others if row[f"d.{c}"])
            found.append(Difference("changed", key_of(row), columns,
                                    expected={c: row[f"e.{c}"] for c in columns},
                                    actual={c: row[f"a.{c}"] for c in columns}))
        return Comparison(
            expected_rows=self._count("expected"), actual_rows=self._count("actual"),
            missing=self._count(f"({missing})"), unexpected=self._count(f"({unexpected})"),
            changed=self._count(f"({changed})"), duplicates=self._count(f"({duplicates})"),
            differences=tuple(found),
        )
