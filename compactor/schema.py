"""Table schemas: storage as JSON, primary-key types, and the schema-evolution rule.

The rule: a file may add columns (they join the table schema as
nullable, older rows read them as null); a column it shares with the table must have the same
logical type. ``string``/``large_string``/``string_view`` are one logical type, as are the binary
flavours, and a dictionary-encoded column has its value type (Parquet writers differ in these
only in encoding; a file pyarrow wrote from timestamps in seconds, which Parquet stores in
milliseconds, has seconds: ``files.arrow_schema``; seconds fit a table column of
milliseconds), also inside nested types. A column of Arrow type ``null`` (all null, no type
given) fits any column and adds none; a table column of type ``null`` (a table created from
such a file) takes the type of the first file that gives one. Anything else, ``int32`` vs
``int64`` included, is a type change and refused with the column, the old and the new type
named.

The table stores a column's plain type (``stored_type``): dictionary-encoded columns their value
type, ``string_view`` and ``binary_view`` their plain ones, ``date64`` as ``date32`` and
``time32[s]`` as ``time32[ms]``, also inside nested types (list views stay list views); that is
what Parquet holds and what a round writes (a table that stored ``date64`` or ``time32[s]``,
as earlier versions did, takes files of the type Parquet gives back). A type Parquet
cannot hold (intervals of months, days and nanoseconds, unions, run-end encoded arrays) is
refused before anything is committed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from compactor.errors import CorruptFile, InvalidTableSpec, SchemaMismatch


def schema_to_text(schema: pa.Schema) -> str:
    """An Arrow schema as text for JSON metadata (base64 Arrow IPC: exact, and never pickle)."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_text(text: str, *, source: str) -> pa.Schema:
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))
    except (ValueError, pa.ArrowInvalid) as e:
        raise CorruptFile(f"{source}: stored schema is not a valid Arrow schema ({e})") from None


def is_key_type(t: pa.DataType) -> bool:
    """Whether a column of type ``t`` can be (part of) a primary key."""
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
        or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_date(t) or pa.types.is_timestamp(t)
    )


def check_table_columns(
    schema: pa.Schema, primary_key: tuple[str, ...], ordering_column: str | None
) -> None:
    """Validate key and ordering columns of a new table; raise :class:`InvalidTableSpec`."""
    if not primary_key:
        raise InvalidTableSpec("a table needs at least one primary key column")
    if len(set(primary_key)) != len(primary_key):
        raise InvalidTableSpec(f"primary key {list(primary_key)} repeats a column")
    if len(set(schema.names)) != len(schema.names):
        raise InvalidTableSpec(f"schema repeats a column name: {schema.names}")
    for name in primary_key:
        if name not in schema.names:
            raise InvalidTableSpec(f"primary key column {name!r} is not in the schema")
        if not is_key_type(schema.field(name).type):
            raise InvalidTableSpec(
                f"primary key column {name!r} has type {schema.field(name).type}; keys must be "
                "integer, string, binary, date or timestamp"
            )
    if ordering_column is not None:
        if ordering_column not in schema.names:
            raise InvalidTableSpec(f"ordering column {ordering_column!r} is not in the schema")
        if ordering_column in primary_key:
            raise InvalidTableSpec(f"ordering column {ordering_column!r} is a key column")
        kind = schema.field(ordering_column).type
        if not (is_key_type(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
            raise InvalidTableSpec(
                f"ordering column {ordering_column!r} has type {kind}; it must be a number, "
                "string, binary, date or timestamp"
            )


def _text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _aligned(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """``b`` (a stored type) with what differs from table type ``a`` only as one logical type
    made ``a``'s, at any depth: the string flavours, the binary flavours, and timestamps in
    seconds where ``a`` has milliseconds (whole seconds are whole milliseconds: Parquet stores
    them so). Where their shapes differ, ``b`` as it is."""

    def leaf(a: pa.DataType, b: pa.DataType) -> pa.DataType:
        if (_text(a) and _text(b)) or (_bytes(a) and _bytes(b)):
            return a
        if pa.types.is_timestamp(a) and pa.types.is_timestamp(b) and \
                (a.unit, b.unit) == ("ms", "s") and a.tz == b.tz:
            return a
        return b

    return zip_types(a, b, leaf)


def zip_types(guide: pa.DataType, t: pa.DataType,
              leaf: Callable[[pa.DataType, pa.DataType], pa.DataType]) -> pa.DataType:
    """``t`` rebuilt with ``leaf(g, u)`` for each type ``u`` it nests and the type ``g`` at the
    same place in ``guide`` (lists of any kind, maps, structs by field name), where the shapes
    match; elsewhere ``t``'s own types."""
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if any(is_list(t) for is_list in lists) and any(is_list(guide) for is_list in lists):
        value = t.value_field.with_type(zip_types(guide.value_type, t.value_type, leaf))
        if pa.types.is_large_list(t):
            return pa.large_list(value)
        return pa.list_(value, t.list_size if pa.types.is_fixed_size_list(t) else -1)
    if pa.types.is_map(t) and pa.types.is_map(guide):
        return pa.map_(t.key_field.with_type(zip_types(guide.key_type, t.key_type, leaf)),
                       t.item_field.with_type(zip_types(guide.item_type, t.item_type, leaf)),
                       t.keys_sorted)
    if pa.types.is_struct(t) and pa.types.is_struct(guide):
        names = [f.name for f in guide]
        return pa.struct([f.with_type(zip_types(guide.field(f.name).type, f.type, leaf))
                          if names.count(f.name) == 1 else f for f in t])
    return leaf(guide, t)


def same_logical_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether a file's (or appended data's) column of type ``b`` holds values of a table
    column of type ``a`` (the same stored type, but for ``_aligned``'s, at any depth)."""
    a, b = stored_type(a), stored_type(b)
    return bool(a == _aligned(a, b))


def _leaves(t: pa.DataType, leaf: Callable[[pa.DataType], pa.DataType]) -> pa.DataType:
    """``t`` with ``leaf`` applied to every type it nests (dictionaries as their values)."""
    if pa.types.is_dictionary(t):
        return _leaves(t.value_type, leaf)
    # (list views stay: pyarrow 26 casts a list view to a list wrongly, [[1], [2]] to
    # [[1], []], and reads and writes them as such)
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_leaves(t.value_type, leaf)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_leaves(t.value_type, leaf)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_leaves(t.value_type, leaf)), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_leaves(t.key_type, leaf)),
                       t.item_field.with_type(_leaves(t.item_type, leaf)), t.keys_sorted)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_leaves(f.type, leaf)) for f in t])
    return leaf(t)


def nests(t: pa.DataType, found: Callable[[pa.DataType], bool]) -> bool:
    """Whether ``t`` or a type it nests (a list's items, a map's keys and items, a struct's
    fields, at any depth) is one ``found`` says yes to."""
    return found(t) or (pa.types.is_nested(t) and any(nests(t.field(i).type, found)
                                                      for i in range(t.num_fields)))


def _stored_leaf(t: pa.DataType) -> pa.DataType:
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    # (Parquet has dates in days and times of day in milliseconds at the coarsest: pyarrow
    # writes date64 and time32[s] so, and reads them back so)
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_time32(t) and t.unit == "s":
        return pa.time32("ms")
    return t


def stored_type(t: pa.DataType) -> pa.DataType:
    """The type a table stores a column of type ``t`` as: without dictionary encoding or view
    layouts, dates in days and times of day in seconds as milliseconds, at any depth (the
    same values, as Parquet holds them)."""
    return _leaves(t, _stored_leaf)


def dates_as_timestamps(t: pa.DataType) -> pa.DataType:
    """``t`` with every date64 it nests as a timestamp in milliseconds (the same numbers, a
    time of day shown; a date64's own value drops it), and dictionaries as their values."""
    return _leaves(t, lambda leaf: pa.timestamp("ms") if pa.types.is_date64(leaf) else leaf)


def stored_field(field: pa.Field, source: str, error: type[Exception] = SchemaMismatch
                 ) -> pa.Field:
    """``field`` with its stored type; ``error`` naming ``source`` and the column where
    Parquet cannot hold it."""
    stored = field.with_type(stored_type(field.type))
    try:
        pq.write_table(pa.schema([stored]).empty_table(), pa.BufferOutputStream())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        raise error(f"{source}: column {field.name!r} has type {field.type}, which Parquet "
                    "files cannot hold; nothing was committed") from None
    return stored


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every column's stored type (``stored_type``), unchecked."""
    fields = [f.with_type(stored_type(f.type)) for f in schema]
    if all(f.equals(g) for f, g in zip(fields, schema, strict=True)):
        return schema
    return pa.schema(fields, metadata=schema.metadata)


def stored_schema(schema: pa.Schema, source: str, error: type[Exception] = SchemaMismatch
                  ) -> pa.Schema:
    """``schema`` with every column's stored type, checked as ``stored_field`` does."""
    for f in schema:
        stored_field(f, source, error)
    return plain_schema(schema)


def evolve(table: pa.Schema, incoming: pa.Schema, *, source: str) -> pa.Schema:
    """``table`` extended by the columns ``incoming`` adds (as nullable), with their stored
    types; a column of type ``null`` in ``table`` takes ``incoming``'s type of it.

    Raises :class:`SchemaMismatch` naming ``source``, the column and both types if a shared
    column changed type or Parquet cannot hold a new one. (Which columns a file must have
    depends on the delta kind.)
    """
    added: list[pa.Field] = []
    typed: dict[str, pa.Field] = {}
    for field in incoming:
        if pa.types.is_null(field.type):
            # every value null and no type said (pandas, JSON): fits any column of the table,
            # and a column the table lacks waits for a file that says its type
            continue
        if field.name in table.names:
            old = table.field(field.name)
            if pa.types.is_null(old.type):  # (all null so far: this file says its type)
                typed[field.name] = stored_field(old.with_type(field.type), source)
            elif not same_logical_type(old.type, field.type):
                raise SchemaMismatch(
                    f"{source}: column {field.name!r} changes type from {old.type} (table) "
                    f"to {field.type}"
                )
        else:
            added.append(stored_field(pa.field(field.name, field.type, nullable=True), source))
    if not added and not typed:
        return table
    return pa.schema([*(typed.get(f.name, f) for f in table), *added], metadata=table.metadata)
