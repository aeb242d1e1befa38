"""Where everything lives under a table root, and how partition values become path components.

::

    <root>/_table/metadata/00000001.json        table metadata, one immutable file per version
    <root>/partitions/<k1>=<v1>/<k2>=<v2>/      one directory per partition ("default" if the
        _log/00000000000000000001.json          table has no partition columns): the commit log,
        _checkpoints/00000000000000000100.json  its checkpoints,
        data/<uuid>.parquet                     delta files the table wrote itself,
        compacted/b00003/<uuid>.parquet         and compacted files, per hash bucket.

Partition column names and values are percent-encoded (everything but ASCII letters, digits and
``-_.~``), so a value such as ``../x`` or ``a/b`` stays inside one path component; every
component also contains a literal ``=``, so none can be ``.`` or ``..``. The escaping is
reversible, so partitions can be listed back from the directory names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote, unquote

from compactor.errors import InvalidPartition

METADATA_DIR = "_table/metadata"
PARTITIONS_DIR = "partitions"
UNPARTITIONED = "default"
LOG_DIR = "_log"
CHECKPOINT_DIR = "_checkpoints"

_NUMBER_WIDTH = 20
_MAX_COMPONENT = 255  # bytes in a file name on common local filesystems


def metadata_file(version: int) -> str:
    return f"{METADATA_DIR}/{version:08d}.json"


def parse_number(name: str) -> int | None:
    """The number in a commit, checkpoint or metadata file name, or ``None`` for other names."""
    stem, dot, ext = name.partition(".")
    return int(stem) if dot and ext == "json" and stem.isdigit() else None


def numbered_file(directory: str, number: int) -> str:
    return f"{directory}/{number:0{_NUMBER_WIDTH}d}.json"


PartitionValue = str | int | bool | date | datetime


def _text(column: str, value: PartitionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, date):  # datetime is a date too
        return value.isoformat()
    raise InvalidPartition(
        f"partition column {column!r}: value {value!r} of type {type(value).__name__} is not "
        "a str, int, bool, date or datetime"
    )


@dataclass(frozen=True, order=True)
class PartitionKey:
    """The values of one partition, in the table's partition-column order (as text)."""

    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, columns: tuple[str, ...], values: dict[str, PartitionValue] | None
    ) -> PartitionKey:
        """Validate ``values`` against the table's partition ``columns``."""
        given = dict(values or {})
        if set(given) != set(columns):
            raise InvalidPartition(
                f"partition values name columns {sorted(given)} but the table is partitioned "
                f"by {list(columns)}"
            )
        key = cls(tuple((c, _text(c, given[c])) for c in columns))
        for column, component in zip(columns, key._components(), strict=True):
            if len(component) > _MAX_COMPONENT:
                raise InvalidPartition(
                    f"partition column {column!r}: value is {len(component)} bytes once escaped;"
                    f" at most {_MAX_COMPONENT} fit in a path component"
                )
        return key

    @classmethod
    def from_dir(cls, rel: str) -> PartitionKey:
        """Inverse of :attr:`dir`."""
        tail = rel.removeprefix(PARTITIONS_DIR + "/")
        if tail == UNPARTITIONED:
            return cls()
        pairs = (part.split("=", 1) for part in tail.split("/"))
        return cls(tuple((unquote(k), unquote(v)) for k, v in pairs))

    @property
    def values(self) -> dict[str, str]:
        return dict(self.items)

    @property
    def dir(self) -> str:
        """This partition's directory, relative to the table root."""
        if not self.items:
            return f"{PARTITIONS_DIR}/{UNPARTITIONED}"
        return f"{PARTITIONS_DIR}/{'/'.join(self._components())}"

    def _components(self) -> list[str]:
        return [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.items]

    def __str__(self) -> str:
        # The escaped form: one line, whatever the values hold.
        return self.dir.removeprefix(PARTITIONS_DIR + "/")


def partition_pairs(text: str) -> list[tuple[str, str]]:
    """The ``(column, value)`` pairs a person names a partition by: ``k=v,k2=v2`` (values as
    written), or the form partitions are printed in, ``k=v/k2=v2`` with escaped values
    (``region=eu%20west``), told apart by a ``/`` between pairs and no comma. ValueError if a
    part is not NAME=VALUE."""
    printed = "," not in text and "/" in text and all("=" in p for p in text.split("/"))
    if printed:
        return [(unquote(k), unquote(v)) for k, v in name_value_pairs(text, "/")]
    return name_value_pairs(text)


def name_value_pairs(text: str, separator: str = ",") -> list[tuple[str, str]]:
    """``a=1,b=2`` -> ``[("a", "1"), ("b", "2")]`` (stripped); ValueError naming a part that
    is not NAME=VALUE."""
    pairs = []
    for item in text.split(separator):
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"{item!r} in {text!r} is not NAME=VALUE")
        pairs.append((name.strip(), value.strip()))
    return pairs


def unescaped(values: dict[str, Any]) -> dict[str, Any] | None:
    """``values`` with escapes of the printed form undone (``eu%20west`` -> ``eu west``), or
    None if that changes nothing: a partition named as printed but with commas."""
    plain = {unquote(k): unquote(v) if isinstance(v, str) else v for k, v in values.items()}
    return plain if plain != values else None


def log_file(partition: PartitionKey, number: int) -> str:
    return numbered_file(f"{partition.dir}/{LOG_DIR}", number)


def checkpoint_dir(partition: PartitionKey) -> str:
    return f"{partition.dir}/{CHECKPOINT_DIR}"


def new_data_file(partition: PartitionKey) -> str:
    """A fresh name for a delta file the table writes itself."""
    return f"{partition.dir}/data/{uuid.uuid4().hex}.parquet"


def new_compacted_file(partition: PartitionKey, bucket: int) -> str:
    """A fresh name for a compacted file of ``bucket``."""
    return f"{partition.dir}/compacted/b{bucket:05d}/{uuid.uuid4().hex}.parquet"
