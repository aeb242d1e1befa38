"""Options of tasks and actors, declared once and validated in one place.

``.options(...)`` and ``@remote(...)`` both go through :func:`validate`, so an unknown option or a
bad value fails the same way everywhere, naming the valid options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from runtime.scheduling import SchedulingHint, validate_scheduling

Kind = Literal["task", "actor"]


@dataclass(frozen=True)
class OptionSpec:
    name: str
    applies_to: frozenset[str]
    task_default: Any
    actor_default: Any
    check: Callable[[Any], str | None]  # returns an error message, or None when valid
    doc: str


def _non_negative_number(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        return "must be a number >= 0"
    return None


def _non_negative_int(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return "must be an integer >= 0 (bytes)"
    return None


def _retry_count(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or v < -1:
        return "must be an integer >= 0, or -1 for unlimited"
    return None


def _retry_exceptions(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, list | tuple) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in v
    ):
        return None
    return "must be True, False, or a list of exception classes"


def _name(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and v):
        return None
    return "must be a non-empty string or None"


def _max_concurrency(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        return "must be an integer >= 1"
    return None


def _scheduling(v: Any) -> str | None:
    try:
        validate_scheduling(v)
    except (TypeError, ValueError) as e:
        return str(e)
    return None


_BOTH = frozenset({"task", "actor"})
_TASK = frozenset({"task"})
_ACTOR = frozenset({"actor"})

SPECS: dict[str, OptionSpec] = {
    s.name: s
    for s in (
        OptionSpec("num_cpus", _BOTH, 1, 0, _non_negative_number,
                   "CPUs reserved while the task runs / for the actor's lifetime"),
        OptionSpec("memory", _BOTH, 0, 0, _non_negative_int,
                   "bytes of memory reserved while the task runs / for the actor's lifetime"),
        OptionSpec("max_retries", _TASK, 3, None, _retry_count,
                   "times a task is re-run after its worker process dies (-1: unlimited)"),
        OptionSpec("retry_exceptions", _TASK, False, None, _retry_exceptions,
                   "also retry on application exceptions: True, or a list of exception classes"),
        OptionSpec("max_restarts", _ACTOR, None, 0, _retry_count,
                   "times an actor's process is restarted after it dies (-1: unlimited)"),
        OptionSpec("name", _ACTOR, None, None, _name,
                   "register the actor under this name for runtime.get_actor()"),
        OptionSpec("max_concurrency", _ACTOR, None, 1, _max_concurrency,
                   "method calls an actor runs at once (threads); 1 keeps calls serial"),
        OptionSpec("scheduling", _BOTH, None, None, _scheduling,
                   "placement hint: 'DEFAULT', 'SPREAD', NodeAffinity(...) or "
                   "PlacementGroupSlot(...)"),
    )
}


def valid_names(kind: Kind) -> list[str]:
    return sorted(n for n, s in SPECS.items() if kind in s.applies_to)


def defaults(kind: Kind) -> dict[str, Any]:
    return {
        n: (s.task_default if kind == "task" else s.actor_default)
        for n, s in SPECS.items()
        if kind in s.applies_to
    }


def validate(kind: Kind, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``options`` for a task or an actor; returns them as a new dict.

    Raises ``ValueError`` for an unknown option (listing the valid ones) and ``ValueError`` or
    ``TypeError`` for a bad value (naming the option and what it must be).
    """
    names = valid_names(kind)
    out: dict[str, Any] = {}
    for key, value in options.items():
        spec = SPECS.get(key)
        if spec is None or kind not in spec.applies_to:
            raise ValueError(
                f"unknown {kind} option {key!r}; valid {kind} options are: {', '.join(names)}"
            )
        problem = spec.check(value)
        if problem is not None:
            raise ValueError(f"{kind} option {key}={value!r}: {problem}")
        out[key] = value
    return out


def resolve(kind: Kind, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validated options with every unset option at its default."""
    merged = defaults(kind)
    merged.update(validate(kind, options))
    return merged


def describe(kind: Kind) -> str:
    """Human-readable list of the options for ``kind`` (used in docs and ``--help``)."""
    return "\n".join(
        f"  {n}: {SPECS[n].doc}" for n in valid_names(kind)
    )


__all__ = ["SPECS", "SchedulingHint", "defaults", "describe", "resolve", "valid_names", "validate"]
