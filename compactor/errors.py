"""The compactor's error tree.

Every failure the table model reports on purpose is a :class:`CompactorError`, and its message is
one line naming the table, partition, file, column or row at fault, so a CLI can print it as is.
Errors that mean "the input is wrong" also derive from :class:`ValueError`, and errors that mean
"that thing is not there" from :class:`LookupError`, so generic handlers keep working.
Credentials never appear in these messages: they name URLs and paths only.
"""

from __future__ import annotations


class CompactorError(Exception):
    """Base class of every error the compactor raises on purpose."""


class TableNotFound(CompactorError, LookupError):
    """The root URL holds no table (nothing there, or something that is not a table)."""


class TableExists(CompactorError):
    """A table was to be created at a root URL that already holds one."""


class InvalidTableSpec(CompactorError, ValueError):
    """A table definition is inconsistent (unknown key column, unsupported key type, ...)."""


class UnknownPartition(CompactorError, LookupError):
    """A partition was read that has no commits, or a commit number beyond its head."""


class InvalidPartition(CompactorError, ValueError):
    """Partition values do not match the table's partition columns."""


class CommitConflict(CompactorError):
    """Another writer committed first in a way this commit cannot be rebased over."""


class CommitUnknown(CommitConflict):
    """A commit's write failed and the log could not be read back to tell whether it landed:
    nothing of the round may be removed (a landed commit names its files); running the round
    again plans from the log as it is."""


# the attributes an interrupt (KeyboardInterrupt, SystemExit: not an Exception, so it stays
# what it is) carries when it came while a commit was being written (its outcome unknown), or
# after a round committed: what to tell
_COMMIT_UNKNOWN = "compactor_commit_unknown"
_COMMITTED = "compactor_committed"


def mark_commit_unknown(e: BaseException, why: str) -> None:
    """Say on ``e`` that it interrupted a commit whose outcome is unknown (``why``)."""
    if commit_unknown(e) is None:
        setattr(e, _COMMIT_UNKNOWN, why)


def mark_committed(e: BaseException, what: str) -> None:
    """Say on ``e`` that it came after ``what`` had committed."""
    setattr(e, _COMMITTED, what)


def _chain(e: BaseException | None) -> list[BaseException]:
    """``e`` and the exceptions it was raised while handling (a second Ctrl-C while the first
    unwinds replaces it), newest first."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__context__
    return seen


def commit_unknown(e: BaseException | None) -> str | None:
    """Why the commit ``e`` (or one it interrupted the handling of) interrupted may have
    landed (None: none interrupted one)."""
    return next((getattr(x, _COMMIT_UNKNOWN) for x in _chain(e)
                 if getattr(x, _COMMIT_UNKNOWN, None)), None)


def committed_before(e: BaseException | None) -> str | None:
    """What had committed before ``e`` (or one it interrupted the handling of) came."""
    return next((getattr(x, _COMMITTED) for x in _chain(e) if getattr(x, _COMMITTED, None)),
                None)


class SchemaMismatch(CompactorError, ValueError):
    """Data does not fit the table schema (incompatible type, missing required column, ...)."""


class MissingColumn(SchemaMismatch):
    """A column that is needed is not there: a data file lacks one the delta kind needs (a key,
    the ordering or the op column), or a read asks for one the table does not have."""


class NullKey(CompactorError, ValueError):
    """A primary-key column holds a null; the message names the file and row."""


class NullValue(SchemaMismatch):
    """A column the table declares not nullable holds a null in a row a delta upserts; the
    message names the file, the column and the row."""


class UnknownOp(CompactorError, ValueError):
    """A CDC op column holds a value that maps to neither upsert nor delete."""


class EmptyDelta(CompactorError, ValueError):
    """A delta has no files, or no rows at all."""


class ForeignFile(CompactorError, ValueError):
    """A file to register is not on the table's filesystem."""


class MissingFile(CompactorError, LookupError):
    """A referenced data file does not exist (any more)."""


class ChangedFile(CompactorError):
    """A referenced data file exists but differs from the one that was registered."""


class FileTooLarge(CompactorError, ValueError):
    """A source file has more rows than row locators can name (2**31 - 1)."""


class TooManyFiles(CompactorError, ValueError):
    """A round would leave a bucket with more files than file ordinals can name (65536)."""


class CorruptFile(CompactorError, ValueError):
    """A file is not readable Parquet (or a metadata file is not valid JSON)."""


class OutsideTableRoot(CompactorError, ValueError):
    """A write was addressed outside the table root; it is refused, never performed."""
