"""A partition's expected current state, recomputed by DuckDB straight from its delta files.

This is ``compactor verify``'s independent engine: it shares no code with the pipeline (no key
hashing, no index, no materialize). It reads every delta's Parquet files itself and applies the
merge contract of DESIGN.md in SQL::

    per primary key (compared by value), the winner is the row with the greatest
        (ordering column, nulls lowest; stream position; file order in the delta; row order)
    and a winning delete (a DELETE delta's row, or a CDC row whose op maps to delete) removes
    the key.

Columns a file lacks are null; every column is cast to the table's type. The result is then
compared with the compacted state, row by row, by key. Inside DuckDB the table's columns go by
their positions (``c0``, ``c1``, ...; a file's by ``#n``): DuckDB's names ignore case, and a
table may have columns ``v`` and ``V``, or named as this module's own (``__ord``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
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
    if pa.types.is_duration(t):  # (Parquet stores durations as plain integers, which DuckDB
        return pa.int64()        # reads as such: their counts of the unit)
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
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as e:  # (half floats from Arrow 16)
        raise NotVerifiable(f"{where}: verify cannot give DuckDB the compacted rows as "
                            f"{schema}: {e}") from None


def _positional(table: pa.Table) -> pa.Table:
    """``table`` with its columns named ``c0``, ``c1``, ... (DuckDB's names ignore case)."""
    return table.rename_columns([f"c{i}" for i in range(table.num_columns)])


class ExpectedState:
    """The expected state of one partition of ``table``, in an in-memory DuckDB database."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.con = duckdb.connect()
        self._local = table.storage.protocol in ("file", "local")
        if not self._local:
            self.con.register_filesystem(table.storage.fs)
        self.columns = list(table.schema.names)
        self.alias = {c: f"c{i}" for i, c in enumerate(self.columns)}
        self.con.register("__table_schema", _positional(
            _for_duckdb(table.schema, f"table {table.url}").empty_table()))
        self.types = dict(zip(self.columns, (row[1] for row in
                                             self._run("DESCRIBE __table_schema")), strict=True))
        self.key = list(table.primary_key)
        self._names: dict[str, list[str]] = {}  # each delta file's columns, in order

    def _location(self, file: DataFile) -> str:
        if self._local:
            path = self.table.storage.strip(file.url)
            assert path is not None
            return path
        return file.url

    def _cast(self, column: str, value: str | None) -> str:
        """Table column ``column`` from ``value`` (SQL; None: null) as its alias."""
        return f"CAST({value or 'NULL'} AS {self.types[column]}) AS {self.alias[column]}"

    def _file_columns(self, file: DataFile) -> None:
        """Check ``file`` is unchanged since it was committed, and note its columns."""
        with closing(self.table.open_file(file)) as parquet:
            self._names[file.url] = parquet.schema_arrow.names
        if "file_row_number" in self._names[file.url]:
            raise NotVerifiable(
                f"file {file.url} has a column named 'file_row_number', the name DuckDB gives "
                "the row numbers verify orders a file's rows by")

    def _select(self, delta: Delta, ordinal: int, file: DataFile) -> str:
        from compactor import DeltaKind

        # (without hive_partitioning DuckDB would take a column named as a directory of the
        # path, partitions/region=eu/..., from the path, not from the file)
        source = (f"read_parquet({_literal(self._location(file))}, file_row_number = true, "
                  "hive_partitioning = false)")
        # the file's columns by position (#1 is its first)
        at = {name: f"#{i + 1}" for i, name in enumerate(self._names[file.url])}
        if delta.kind is DeltaKind.DELETE:
            at = {c: v for c, v in at.items() if c in {*self.key, self.table.ordering_column}}
        values = [self._cast(c, at.get(c)) for c in self.columns]
        order = self.table.ordering_column
        values.append(f"CAST({at[order]} AS {self.types[order]}) AS __ord" if order
                      else "0 AS __ord")
        if delta.kind is DeltaKind.UPSERT:
            deleted = "FALSE"
        elif delta.kind is DeltaKind.DELETE:
            deleted = "TRUE"
        else:
            assert delta.cdc is not None
            op = at[delta.cdc.column]
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
            list(pool.map(self._file_columns, (f for _, _, f in items)))
        empty = ", ".join(self._cast(c, None) for c in self.columns)
        self._run(f"CREATE TEMP TABLE __rows AS SELECT {empty}, 0 AS __ord, "
                         "0::BIGINT AS __pos, 0 AS __file, 0::BIGINT AS __row, FALSE AS __del "
                         "LIMIT 0")
        if self.table.ordering_column:  # __ord takes the ordering column's type
            self._run("ALTER TABLE __rows ALTER __ord TYPE "
                             f"{self.types[self.table.ordering_column]}")
        for start in range(0, len(items), _FILES_PER_STATEMENT):
            selects = [self._select(*item) for item in items[start:start + _FILES_PER_STATEMENT]]
            self._run("INSERT INTO __rows " + " UNION ALL ".join(selects))
        keys = ", ".join(self.alias[k] for k in self.key)
        columns = ", ".join(self.alias[c] for c in self.columns)
        self._run(
            f"CREATE TEMP TABLE expected AS SELECT {columns} FROM ("
            f"  SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY __ord DESC NULLS LAST,"
            f"    __pos DESC, __file DESC, __row DESC) AS __rank FROM __rows"
            f") WHERE __rank = 1 AND NOT __del")
        self._run("DROP TABLE __rows")
        return self._count("expected")

    def _run(self, sql: str) -> list[tuple[Any, ...]]:
        # DuckDB wants each result fetched to the end before the connection does other work
        try:
            return self.con.execute(sql).fetchall()
        except duckdb.InvalidInputException as e:
            if "UTF8" not in str(e):  # (an unknown CDC op, say: the partition's failure)
                raise
            # text that is not UTF-8, which Arrow and Parquet writers let through
            raise NotVerifiable(
                f"table {self.table.url}: DuckDB, verify's engine, cannot read the data: "
                f"{str(e).splitlines()[0]}") from None

    def _count(self, relation: str) -> int:
        return int(self._run(f"SELECT count(*) FROM {relation}")[0][0])

    def _rows(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Rows of ``query`` by its column names (the aliases, ``e.c0``, ...)."""
        cursor = self.con.execute(f"{query} LIMIT {limit}")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def compare(self, actual: pa.Table, limit: int = 20) -> Comparison:
        """Compare table ``expected`` (see :meth:`load`) with ``actual``, the compacted rows."""
        given = _cast_for_duckdb(actual, f"table {self.table.url}")
        self.con.register("__actual_arrow", _positional(given))
        at = {c: f"#{i + 1}" for i, c in enumerate(actual.column_names)}
        casts = ", ".join(self._cast(c, at.get(c)) for c in self.columns)
        self._run(f"CREATE OR REPLACE TEMP TABLE actual AS SELECT {casts} "
                         "FROM __actual_arrow")
        keys = ", ".join(self.alias[k] for k in self.key)
        others = [c for c in self.columns if c not in self.key]

        def key_of(row: dict[str, Any]) -> dict[str, Any]:
            return {k: row[self.alias[k]] for k in self.key}

        def named(row: dict[str, Any], prefix: str = "", columns: Sequence[str] = self.columns
                  ) -> dict[str, Any]:
            return {c: row[prefix + self.alias[c]] for c in columns}

        duplicates = f"SELECT {keys}, count(*) AS __copies FROM actual GROUP BY {keys} " \
                     "HAVING count(*) > 1"
        missing = f"SELECT * FROM expected ANTI JOIN actual USING ({keys})"
        unexpected = f"SELECT * FROM actual ANTI JOIN expected USING ({keys})"
        differs = [f"e.{self.alias[c]} IS DISTINCT FROM a.{self.alias[c]}" for c in others]
        picks = [f"e.{a} AS {_name('e.' + a)}, a.{a} AS {_name('a.' + a)}, ({d}) AS "
                 f"{_name('d.' + a)}" for a, d in zip((self.alias[c] for c in others), differs,
                                                      strict=True)]
        changed = (f"SELECT {', '.join([keys, *picks])} FROM expected e JOIN actual a "
                   f"USING ({keys}) WHERE {' OR '.join(differs)}" if others
                   else f"SELECT {keys} FROM expected LIMIT 0")

        found: list[Difference] = []
        for row in self._rows(duplicates, limit):
            found.append(Difference("duplicate", key_of(row),
                                    actual={"copies": row["__copies"]}))
        for row in self._rows(missing, limit):
            found.append(Difference("missing", key_of(row), expected=named(row)))
        for row in self._rows(unexpected, limit):
            found.append(Difference("unexpected", key_of(row), actual=named(row)))
        for row in self._rows(changed, limit):
            columns = tuple(c for c in others if row[f"d.{self.alias[c]}"])
            found.append(Difference("changed", key_of(row), columns,
                                    expected=named(row, "e.", columns),
                                    actual=named(row, "a.", columns)))
        return Comparison(
            expected_rows=self._count("expected"), actual_rows=self._count("actual"),
            missing=self._count(f"({missing})"), unexpected=self._count(f"({unexpected})"),
            changed=self._count(f"({changed})"), duplicates=self._count(f"({duplicates})"),
            differences=tuple(found),
        )
