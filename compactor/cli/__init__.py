"""The ``compactor`` command line: compact table partitions, inspect them, verify them.

One module per command (group); each is presentation over the compactor API. ``main`` runs a
command line and returns the exit code; ``run`` is the console script's entry point.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from importlib.metadata import entry_points

import click

from compactor.cli.append import append
from compactor.cli.common import EXIT_INTERRUPTED
from compactor.cli.compact import compact
from compactor.cli.demo import demo
from compactor.cli.gc import gc
from compactor.cli.plan import plan
from compactor.cli.read import read
from compactor.cli.show import history, show
from compactor.cli.table import table_group
from compactor.cli.verify import verify
from compactor.errors import commit_unknown, committed_before

__all__ = ["cli", "main"]

_HELP = """Compact change data (upserts, deletes, CDC exports) into current-state Parquet.

\b
A table lives under a root URL: a local path, file://, or s3:// (any S3-compatible store:
--endpoint-url, or the usual AWS environment: AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL).
Each partition has an ordered stream of deltas; compact folds them into a deduplicated,
current-state set of Parquet files.

\b
Start here:
  compactor demo                      # the whole job on a generated CDC table, in seconds
\b
Typical use:
  compactor table create s3://lake/orders -k order_id --order-by lsn --schema-from first.parquet
  compactor append s3://lake/orders --kind cdc 's3://exports/orders/2024/05/01/*.parquet'
  compactor compact s3://lake/orders --dry-run
  compactor compact s3://lake/orders --backend ray --address auto
  compactor verify s3://lake/orders

\b
Every command takes --json (machine-readable output on stdout) and --debug (tracebacks).
Exit codes: 0 ok, 1 failure, 2 usage error, 3 commit conflict (another writer won; nothing
was committed; or, CommitUnknown, the commit's answer was lost and the log could not be read
back: run it again), 130 interrupted.
"""


@click.group("compactor", help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compactor")
def cli() -> None:
    pass


for _command in (table_group, append, compact, plan, show, history, verify, read, gc, demo):
    cli.add_command(_command)


def _add_plugins() -> None:
    """Command groups of packages above this one (``jobs``) plug in through the
    ``compactor.commands`` entry point, loaded when the command line runs, so that compactor
    never imports them: imports flow jobs -> compactor -> runtime."""
    for entry in entry_points(group="compactor.commands"):
        if entry.name not in cli.commands:
            cli.add_command(entry.load(), entry.name)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    A usage error (exit 2) is explained on stderr as click does; with ``--json`` on the command
    line, stdout also gets the JSON error object every other failure prints.
    """
    _add_plugins()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = cli.main(args=args, prog_name="compactor", standalone_mode=False)
    except click.exceptions.ClickException as e:
        if "--json" in args:
            click.echo(json.dumps({"ok": False, "error": " ".join(e.format_message().split()),
                                   "error_type": type(e).__name__, "exit_code": e.exit_code}))
        e.show()
        return e.exit_code
    except click.exceptions.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C: the shells' 128 + SIGINT
            why, done = commit_unknown(e.__context__), committed_before(e.__context__)
            message = (f"interrupted while committing: {why}; `compactor history` shows "
                       "whether it was (the files it names were kept either way)" if why else
                       f"interrupted after {done}" if done else
                       "interrupted: nothing was committed by a round that had not finished")
            if "--json" in args:  # (the one JSON document every failure prints)
                click.echo(json.dumps({"ok": False, "error": message,
                                       "error_type": "Interrupted",
                                       "exit_code": EXIT_INTERRUPTED}))
            click.echo(message, err=True)
            return EXIT_INTERRUPTED
        click.echo("Aborted!", err=True)
        return 1
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        click.echo(e.code, err=True)
        return 1
    return code if isinstance(code, int) else 0


def run() -> None:
    """The ``compactor`` executable: ``main``, then leave without tearing the interpreter down.

    Arrow's native thread pools can still be alive while Python tears its modules down, and
    their destructors then call ``std::terminate`` now and then (apache/arrow#34314): the
    command did its work and printed its output, yet the process dies of SIGABRT. So after
    ``main`` the exit handlers run and the streams are flushed here, and the process ends with
    ``os._exit`` and ``main``'s exit code.
    """
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
