"""``compactor gc``: remove files under a table root that no commit references."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from compactor.cli.common import Session, command
from compactor.cli.params import Duration
from compactor.units import format_size

if TYPE_CHECKING:
    from compactor.gc import GcResult


def render_result(result: GcResult, out: Console) -> None:
    verb = "would remove" if result.dry_run else "removed"
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(result.removed_by_kind.items()))
    out.print(f"{result.table}: {verb} {len(result.removed):,} unreferenced file(s) "
              f"({format_size(result.removed_bytes)}{'; ' + kinds if kinds else ''}); kept "
              f"{result.referenced:,} referenced and {result.young:,} younger than "
              f"{result.older_than:g}s, in {result.partitions:,} partition(s)")
    for url in result.removed:
        out.print(f"  {url}")


@command("gc")
@click.argument("url")
@click.option("--older-than", type=Duration(), default="1h", show_default=True,
              help="Grace period: only files older than this are removed (e.g. 30m, 1h, 2d). "
                   "It must exceed the longest compaction round, whose files are unreferenced "
                   "until it commits.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def gc(session: Session, url: str, older_than: float, dry_run: bool) -> None:
    """Remove files under the table root that no commit references.

    Such files are left by work that did not commit: a round that failed and could not delete
    what it wrote, a killed compaction, an interrupted append. A file is kept if any commit in
    its partition's log references it (every version stays readable), or if it is younger
    than --older-than (work still running). Only the table's own data, compacted, index and
    temporary files are candidates; commit logs and metadata are never removed.

    \b
    Examples:
      compactor gc s3://lake/orders --dry-run
      compactor gc ./orders --older-than 2h --json
    """
    from compactor.gc import collect_garbage

    table = session.open_table(url)
    result = collect_garbage(table, older_than=older_than, dry_run=dry_run)
    data: dict[str, Any] = result.to_dict()
    session.emit(data, lambda out: render_result(result, out))
