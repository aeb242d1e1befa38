"""Placement hints, shared by every backend.

The local backend has one node, so it checks the hints (a node id must be its own) and otherwise
schedules as usual; the Ray backend maps them onto Ray's scheduling strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeAffinity:
    """Run on the node with this id (``runtime.nodes()`` lists them).

    ``soft=True`` allows another node when that one is gone or full.
    """

    node_id: str
    soft: bool = False


@dataclass(frozen=True)
class PlacementGroupSlot:
    """Run inside bundle ``bundle_index`` of a placement group (gang placement).

    ``bundle_index=-1`` means any bundle of the group.
    """

    placement_group: Any
    bundle_index: int = -1


SchedulingHint = str | NodeAffinity | PlacementGroupSlot | None

STRATEGIES = ("DEFAULT", "SPREAD")


def validate_scheduling(hint: Any) -> None:
    if hint is None or isinstance(hint, NodeAffinity | PlacementGroupSlot):
        return
    if isinstance(hint, str):
        if hint.upper() not in STRATEGIES:
            raise ValueError(
                f"unknown scheduling strategy {hint!r}; use one of {', '.join(STRATEGIES)}, "
                "NodeAffinity(node_id) or PlacementGroupSlot(pg)"
            )
        return
    raise TypeError(
        f"scheduling must be a strategy name, NodeAffinity or PlacementGroupSlot, not {hint!r}"
    )
