"""Click parameter types for what the commands take: sizes, partition values, CDC ops, schemas.

A value that does not parse is a usage error (exit 2) naming the option and the bad text.
"""

from __future__ import annotations

import re
from typing import Any

import click
import pyarrow as pa

from compactor.layout import name_value_pairs, partition_pairs
from compactor.units import format_size, parse_duration, parse_size


class Size(click.ParamType):
    """``64MB``, ``1GiB``, ... -> bytes; ``least``: the smallest taken (a bare number is
    bytes: ``--memory 1`` is one byte, not a gigabyte)."""

    name = "size"

    def __init__(self, least: int = 0, what: str = "") -> None:
        self.least, self.what = least, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if size < self.least:
            self.fail(f"{value!r} is {format_size(size)}, less than the {format_size(self.least)} "
                      f"{self.what}", param, ctx)
        return size


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            seconds = parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if seconds < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return seconds


class PartitionValues(click.ParamType):
    """``day=2024-05-01,region=eu`` -> ``{"day": "2024-05-01", "region": "eu"}``; also the
    printed form, ``day=2024-05-01/region=eu%20west``."""

    name = "k=v[,k=v...]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> dict[str, str]:
        if isinstance(value, dict):
            return value
        try:
            pairs = partition_pairs(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
        values = dict(pairs)
        if len(values) != len(pairs):
            self.fail(f"{value!r} names a partition column twice", param, ctx)
        return values


class OpValues(click.ParamType):
    """``I=upsert,U=upsert,D=delete`` -> ``(("I", "U"), ("D",))``: upsert and delete values."""

    name = "v=upsert|delete[,...]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if isinstance(value, tuple):
            return value
        try:
            pairs = name_value_pairs(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
        wrong = [meaning for _, meaning in pairs if meaning.lower() not in ("upsert", "delete")]
        if wrong:
            self.fail(f"op meaning {wrong[0]!r} is neither 'upsert' nor 'delete'", param, ctx)
        meanings: dict[str, set[str]] = {}
        for op, meaning in pairs:
            meanings.setdefault(op, set()).add(meaning.lower())
        both = [op for op, said in meanings.items() if len(said) > 1]
        if both:
            self.fail(f"op value {both[0]!r} is given as both upsert and delete", param, ctx)
        upsert = tuple(dict.fromkeys(op for op, meaning in pairs if meaning.lower() == "upsert"))
        delete = tuple(dict.fromkeys(op for op, meaning in pairs if meaning.lower() == "delete"))
        if not upsert or not delete:
            self.fail(f"{value!r} needs at least one upsert and one delete value", param, ctx)
        return upsert, delete


class Columns(click.ParamType):
    """``a,b`` -> ``("a", "b")``."""

    name = "col[,col...]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        names = tuple(n.strip() for n in str(value).split(","))
        if not all(names):
            self.fail(f"{value!r} has an empty column name", param, ctx)
        return names


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside brackets or parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


_DECIMAL = re.compile(r"decimal(?:128)?\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_TIMESTAMP_TZ = re.compile(r"timestamp\[\s*(s|ms|us|ns)\s*,\s*(?:tz\s*=\s*)?([^\]]+?)\s*\]")


def parse_type(text: str) -> pa.DataType:
    """An Arrow type from its usual name: ``int64``, ``string``, ``timestamp[us, tz=UTC]``..."""
    text = text.strip()
    if m := _DECIMAL.fullmatch(text):
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    if m := _TIMESTAMP_TZ.fullmatch(text):
        return pa.timestamp(m.group(1), tz=m.group(2))
    try:
        return pa.type_for_alias(text)
    except ValueError:
        raise ValueError(
            f"unknown type {text!r}; use an Arrow type name such as int64, string, float64, "
            "bool, date32, timestamp[us], timestamp[us, tz=UTC], decimal(18,2)"
        ) from None


def parse_schema(text: str) -> pa.Schema:
    """``id:int64 not null, name:string, lsn:int64`` -> an Arrow schema."""
    fields = []
    for item in _split_top_level(text):
        name, colon, rest = item.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"{item!r} in the schema is not NAME:TYPE")
        nullable = True
        if re.search(r"\s+not\s+null$", rest, re.IGNORECASE):
            rest, nullable = re.sub(r"\s+not\s+null$", "", rest, flags=re.IGNORECASE), False
        fields.append(pa.field(name.strip(), parse_type(rest), nullable=nullable))
    return pa.schema(fields)


class SchemaText(click.ParamType):
    name = "name:type[,...]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> pa.Schema:
        if isinstance(value, pa.Schema):
            return value
        try:
            return parse_schema(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
