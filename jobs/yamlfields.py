"""Reading a YAML document field by field, so that every error names its line and field.

PyYAML's safe loader builds plain dicts and lists and forgets where each value came from. The
loader here is :class:`yaml.SafeLoader` (no arbitrary objects, as ``yaml.safe_load``) whose
mappings and sequences also remember the line of each key and item, and which refuses a key given
twice (plain ``safe_load`` silently keeps the last); a key brought in by a merge key
(``<<: *base``) may be given once more, which overrides it, as YAML merge keys mean.
:class:`Fields` then reads one mapping: typed getters, defaults, and unknown keys rejected with
the list of valid ones. Every problem is a :class:`ConfigError` reading
``FILE:LINE: PATH.FIELD: what is wrong``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import yaml

from compactor import units
from compactor.errors import CompactorError
from compactor.units import parse_size

T = TypeVar("T")

# Far beyond any sensible tick, TTL or timeout, and well within what timers accept (Python's
# threading.TIMEOUT_MAX is about 292 years): a longer wait fails with OverflowError at run time.
MAX_DURATION = 100 * 365 * 86400.0


class ConfigError(CompactorError, ValueError):
    """A job config is malformed; the message names the file, line and field."""


class _Map(dict[Any, Any]):
    line: int = 0
    lines: dict[Any, int]


class _Seq(list[Any]):
    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


MERGE_TAG = "tag:yaml.org,2002:merge"


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    # flatten_mapping replaces the merge keys (``<<: *base``) by the pairs they bring in, put
    # before the mapping's own pairs; so the pairs after the first ``merged`` ones are the
    # explicit keys. A merged key may be overridden (the YAML merge rule: the explicit key
    # wins, as the later pair does below); only an explicit key given twice is an error.
    explicit = sum(1 for key_node, _ in node.value if key_node.tag != MERGE_TAG)
    loader.flatten_mapping(node)
    merged = len(node.value) - explicit
    out = _Map()
    out.line, out.lines = node.start_mark.line + 1, {}
    given: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if index >= merged:
            if key in given:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping",
                    key_node.start_mark)
            given.add(key)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(item, deep=True) for item in node.value)
    out.line, out.lines = node.start_mark.line + 1, [i.start_mark.line + 1 for i in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load(text: str, source: str) -> Fields:
    """The top-level mapping of the YAML ``text`` read from ``source`` (a file name)."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty; it needs at least a 'jobs' list")
    if not isinstance(data, _Map):
        raise ConfigError(f"{source}:1: the document must be a mapping (with a 'jobs' list), "
                          f"not a {_kind(data)}")
    return Fields(data, "", source)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return "null" if value is None else type(value).__name__


def parse_duration(value: Any) -> float:
    """Seconds in ``value``: a number (seconds) or text such as ``90s``, ``15m``, ``1h30m``.

    YAML's ``.nan`` and ``.inf`` are floats, so they are refused here as well as in text.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int with hundreds of digits
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a duration: it must be a finite number of "
                             "seconds")
        return seconds
    return units.parse_duration(str(value))


class Fields:
    """One YAML mapping at ``path`` (e.g. ``jobs[0].triggers``) of ``source``."""

    def __init__(self, data: _Map, path: str, source: str) -> None:
        self.data, self.path, self.source = data, path, source
        self.line = data.line

    def error(self, key: str | None, message: str, line: int | None = None) -> ConfigError:
        return ConfigError(f"{self.where(key, line)}: {message}")

    def where(self, key: str | None, line: int | None = None) -> str:
        """``FILE:LINE: PATH.KEY``: where ``key`` (``None``: this mapping) is written."""
        if line is None:
            line = self.data.lines.get(key, self.line) if key is not None else self.line
        name = ".".join(p for p in (self.path, key) if p)
        return f"{self.source}:{line}: {name or 'config'}"

    def check_keys(self, valid: Iterable[str]) -> None:
        valid = list(valid)
        for key in self.data:
            if key not in valid:
                raise self.error(str(key), f"unknown field; valid fields here: {', '.join(valid)}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def _typed(self, key: str, default: Any, required: bool, convert: Callable[[Any], T],
               what: str) -> T | Any:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, f"is required ({what})") if key in self.data else \
                    self.error(None, f"missing required field {key!r} ({what})")
            return default
        try:
            return convert(value)
        except (TypeError, ValueError) as e:
            raise self.error(key, str(e)) from None

    def text(self, key: str, default: str | None = None, *, required: bool = False,
             choices: Iterable[str] | None = None) -> Any:
        options = list(choices or [])

        def convert(v: Any) -> str:
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"expected non-empty text, got {_kind(v)} {v!r}")
            if options and v not in options:
                raise ValueError(f"{v!r} is not one of {', '.join(options)}")
            return v.strip()

        return self._typed(key, default, required, convert, "text")

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0) -> Any:
        def convert(v: Any) -> int:
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"expected a whole number, got {_kind(v)} {v!r}")
            if v < minimum:
                raise ValueError(f"{v} is less than {minimum}")
            return v

        return self._typed(key, default, False, convert, "a whole number")

    def size(self, key: str, default: int | None = None) -> Any:
        def convert(v: Any) -> int:
            if isinstance(v, bool):
                raise ValueError(f"expected a size such as 256MB, got {v!r}")
            return v if isinstance(v, int) and v > 0 else parse_size(str(v))

        return self._typed(key, default, False, convert, "a size such as 256MB")

    def duration(self, key: str, default: float | None = None, *, positive: bool = True) -> Any:
        def convert(v: Any) -> float:
            seconds = parse_duration(v)
            if seconds < 0 or (positive and seconds == 0):
                raise ValueError(f"{v!r} must be {'positive' if positive else 'zero or more'}")
            if seconds > MAX_DURATION:
                raise ValueError(f"{v!r} is longer than {MAX_DURATION / (365 * 86400):.0f} "
                                 "years")
            return seconds

        return self._typed(key, default, False, convert, "a duration such as 15m")

    def mapping(self, key: str) -> Fields | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, _Map):
            raise self.error(key, f"expected a mapping, got {_kind(value)} {value!r}")
        return Fields(value, ".".join(p for p in (self.path, key) if p), self.source)

    def items(self, key: str) -> list[tuple[str, int, Any]]:
        """``(path, line, value)`` of each item of the list at ``key`` (empty if absent)."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, _Seq):
            raise self.error(key, f"expected a list, got {_kind(value)} {value!r}")
        base = ".".join(p for p in (self.path, key) if p)
        return [(f"{base}[{i}]", line, item)
                for i, (line, item) in enumerate(zip(value.lines, value, strict=True))]

    def child(self, path: str, line: int, value: Any) -> Fields:
        """The mapping ``value`` found at ``path`` (a list item), or an error at ``line``."""
        if not isinstance(value, _Map):
            raise ConfigError(f"{self.source}:{line}: {path}: expected a mapping, got "
                              f"{_kind(value)} {value!r}")
        return Fields(value, path, self.source)
