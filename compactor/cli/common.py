"""What every command shares: its options, output (text or ``--json``), and error handling.

Exit codes: 0 success, 1 failure, 2 usage error (click's), 3 commit conflict. An error is
printed as one line naming the table, partition or file at fault (the compactor's errors are
written that way); ``--debug`` prints the full traceback (remote ones included) first.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import fsspec
from rich.console import Console
from rich.text import Text

from compactor.cli.params import PartitionValues
from compactor.errors import UnknownPartition
from compactor.layout import unescaped

if TYPE_CHECKING:
    from compactor import Partition, Table

EXIT_FAILURE, EXIT_CONFLICT = 1, 3  # 2, usage errors, is click's
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a process SIGINT ended
_S3 = ("s3", "s3a")
_PIPED_WIDTH = 160


class CommandError(Exception):
    """A failure the command itself detected; its message names the thing at fault."""


@dataclass
class Session:
    """One invocation's settings and consoles."""

    json: bool = False
    debug: bool = False
    endpoint_url: str | None = None
    where: str = ""  # what the command works on, to name it in errors that do not
    # No markup: printed values are URLs, partition values and data, which may hold "[...]".
    # Wide when piped, so that tables in logs are not squeezed into 80 columns.
    out: Console = field(default_factory=lambda: Console(
        markup=False, highlight=False, soft_wrap=True,
        width=None if sys.stdout.isatty() else _PIPED_WIDTH))
    err: Console = field(default_factory=lambda: Console(stderr=True, markup=False,
                                                         highlight=False))

    def storage_options(self, url: str) -> dict[str, Any] | None:
        """fsspec options for ``url``: the ``--endpoint-url`` of S3 URLs (the rest: AWS env)."""
        protocol = fsspec.core.split_protocol(url)[0]
        if self.endpoint_url and protocol in _S3:
            return {"endpoint_url": self.endpoint_url}
        return None

    def filesystem(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        options = self.storage_options(url) or {}
        fs, path = fsspec.core.url_to_fs(url, **options)
        return fs, str(path)

    def open_table(self, url: str) -> Table:
        from compactor import open_table

        self.where = f"table {url}"
        return open_table(url, storage_options=self.storage_options(url))

    def partition(self, table: Table, values: Mapping[str, str] | None,
                  existing: bool = False) -> Partition:
        """The partition ``--partition`` names; an unpartitioned table's only one by default.
        ``existing``: it must have commits (checked before any work starts), else the error
        names the partitions the table has."""
        if values is None and table.partition_by:
            raise click.UsageError(
                f"table {table.url} is partitioned by {', '.join(table.partition_by)}: "
                f"pass --partition {','.join(f'{c}=...' for c in table.partition_by)}"
            )
        part = table.partition(values)
        if existing and values and part.version() == 0:
            # partitions are printed escaped (region=eu%20west): that form names them too
            plain = unescaped(dict(values))
            if plain is not None and table.partition(plain).version() > 0:
                part = table.partition(plain)
        self.where = f"partition {part.key} of table {table.url}"
        if existing and part.version() == 0:
            raise UnknownPartition(f"partition {part.key} of {table.url} has no commits: "
                                   f"nothing was ever appended to it; {_known(table)}")
        return part

    def emit(self, data: Any, render: Callable[[Console], None]) -> None:
        """``data`` as JSON with ``--json``, else ``render`` it for people."""
        if self.json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            render(self.out)

    def note(self, text: str) -> None:
        """A side remark for people (stderr, so ``--json`` output stays parseable)."""
        self.err.print(text)

    def fail(self, error: BaseException) -> int:
        """Report ``error`` and return the exit code it maps to."""
        from compactor.errors import CommitConflict, CompactorError

        code = EXIT_CONFLICT if isinstance(error, CommitConflict) else EXIT_FAILURE
        message = " ".join(str(error).split()) or type(error).__name__
        notes = getattr(error, "__notes__", None)  # e.g. which file an I/O error was reading
        if notes:
            message = f"{message} ({'; '.join(' '.join(str(n).split()) for n in notes)})"
        if not isinstance(error, CompactorError | CommandError):
            message = f"{type(error).__name__}: {message}"
            if self.where and self.where.split()[-1] not in message:
                message = f"{self.where}: {message}"
        if self.debug:
            traceback.print_exception(error, file=sys.stderr)
        if self.json:
            click.echo(json.dumps({"ok": False, "error": message,
                                   "error_type": type(error).__name__, "exit_code": code}))
        click.echo(f"error: {message}", err=True)
        return code


def _common_params() -> list[click.Parameter]:
    return [
        click.Option(["--json", "json_output"], is_flag=True,
                     help="Print the result as JSON on stdout (progress and notes go to stderr)."),
        click.Option(["--endpoint-url"], metavar="URL",
                     help="S3 endpoint of an S3-compatible store. Credentials, profile and "
                          "region come from the usual AWS environment (AWS_PROFILE, AWS_REGION, "
                          "AWS_ENDPOINT_URL, ...)."),
        click.Option(["--debug"], is_flag=True, help="Print the full traceback of an error."),
    ]


def command(name: str, *, group: click.Group | None = None,
            **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """Make ``f(session, **params)`` command ``name`` (of ``group``) with the common options."""

    def decorate(f: Callable[..., Any]) -> click.Command:
        @functools.wraps(f)
        def run(json_output: bool, endpoint_url: str | None, debug: bool, **params: Any) -> None:
            session = Session(json=json_output, debug=debug, endpoint_url=endpoint_url)
            try:
                f(session, **params)
            except (click.exceptions.ClickException, click.exceptions.Exit,
                    click.exceptions.Abort):
                raise
            except Exception as e:
                sys.exit(session.fail(e))

        cmd = click.command(name, **kwargs)(run)
        cmd.params.extend(_common_params())
        if group is not None:
            group.add_command(cmd)
        return cmd

    return decorate


def _known(table: Table, shown: int = 5) -> str:
    """The partitions ``table`` has, for an error about one it has not."""
    if not table.partition_by:
        return "append a delta first"
    names = [str(p.key) for p in table.partitions()]
    if not names:
        return "the table has no partitions yet"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"the table's partitions: {', '.join(names[:shown])}{more}"


def partition_option() -> Callable[[Any], Any]:
    return click.option(
        "--partition", "-p", type=PartitionValues(),
        help="Partition values, e.g. day=2024-05-01,region=eu (default: the only partition of "
             "an unpartitioned table).")


def styled(text: str, style: str) -> Text:
    return Text(text, style=style)


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
