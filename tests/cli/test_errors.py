"""Exit codes, usage errors, one-line errors naming the thing at fault, and ``--help``."""

from __future__ import annotations

import contextlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli.conftest import SCHEMA, compactor, upserts, write_parquet


@pytest.mark.parametrize("args, complaint", [
    (["no-such-command"], "No such command"),
    (["compact"], "Missing argument 'URL'"),
    (["compact", "t", "--no-such-option"], "No such option"),
    (["compact", "t", "--target-file-size", "12XB"], "'12XB' is not a size"),
    (["compact", "t", "--compression", "lzo"], "'lzo' is not one of 'zstd', 'lz4'"),
    (["compact", "t", "--backend", "spark"], "'spark' is not one of"),
    (["compact", "t", "--buckets", "0"], "--buckets"),
    (["compact", "t", "--memory", "1"],
     "'1' is 1 B, less than the 64.0 MiB a round's runtime needs at least"),
    (["compact", "t", "--address", "auto"],
     "--address auto joins a Ray cluster: add --backend ray (the local runtime takes no"),
    (["show", "t", "--partition", "day"], "'day' in 'day' is not NAME=VALUE"),
    (["append", "t", "--kind", "upsert"], "Missing argument 'PATH...'"),
    (["append", "t", "x.parquet", "--kind", "merge"], "'merge' is not one of"),
    (["append", "t", "x.parquet", "--kind", "upsert", "--op-column", "Op"],
     "apply to --kind cdc only"),
    (["append", "t", "x.parquet", "--kind", "cdc", "--op-values", "I=insert"], "'insert'"),
    (["append", "t", "x.parquet", "--kind", "cdc", "--op-values", "I=upsert,D=delete,D=upsert"],
     "op value 'D' is given as both upsert and delete"),
    (["table", "create", "t", "-k", "id"], "exactly one of --schema and --schema-from"),
    (["table", "create", "t", "-k", "id", "--schema", "id:int65"], "unknown type 'int65'"),
    (["table", "create", "t", "-k", "id", "--schema", "id:int64", "--buckets", "16385"],
     "16385 is not in the range 1<=x<=16384"),
])
def test_bad_arguments_exit_2_and_say_what_is_wrong(args: list[str], complaint: str,
                                                    tmp_path: Path) -> None:
    run = compactor(*args, cwd=tmp_path)
    assert run.code == 2, run
    assert complaint in run.err, run
    assert not (tmp_path / "t").exists()


def test_an_unknown_backend_in_the_environment_is_a_usage_error(tmp_path: Path) -> None:
    """It started 'the bogus runtime', then failed the partition: 'ValueError: unknown runtime
    backend', exit 1, the variable not named."""
    run = compactor("compact", "t", cwd=tmp_path, env={"COMPACTOR_BACKEND": "bogus"})
    assert run.code == 2, run
    assert "$COMPACTOR_BACKEND='bogus' is not a runtime backend: choose local or ray" in run.err
    assert "starting" not in run.err


def test_usage_errors_are_json_too_with_json(tmp_path: Path) -> None:
    run = compactor("compact", "t", "--target-file-size", "12XB", "--json", cwd=tmp_path)
    assert run.code == 2, run
    error = run.json()
    assert (error["ok"], error["exit_code"], error["error_type"]) == (False, 2, "BadParameter")
    assert "'12XB' is not a size" in error["error"] and "'12XB' is not a size" in run.err
    assert compactor("no-such-command", "--json", cwd=tmp_path).json()["exit_code"] == 2
    assert compactor("--help", cwd=tmp_path).code == 0


def test_failures_exit_1_with_one_line_naming_the_thing_at_fault(table_url: str,
                                                                  tmp_path: Path) -> None:
    missing_table = tmp_path / "nowhere"
    run = compactor("show", missing_table)
    assert run.code == 1 and run.err.count("\n") == 1 and str(missing_table) in run.err, run
    as_json = compactor("verify", missing_table, "--json")
    assert as_json.code == 1
    assert as_json.json()["error_type"] == "TableNotFound"
    assert str(missing_table) in as_json.json()["error"]
    assert as_json.err == f"error: {as_json.json()['error']}\n"  # (people read stderr)

    compactor("table", "create", table_url, "-k", "id", "--order-by", "lsn",
              "--partition-by", "day", "--schema", SCHEMA)
    good = write_parquet(tmp_path / "good.parquet", upserts([1, 2], "a", 0))
    no_key = write_parquet(tmp_path / "no-key.parquet", {"v": ["x"], "lsn": [1]})
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    absent = tmp_path / "absent.parquet"
    in_day = ["-p", "day=1"]
    assert compactor("append", table_url, *in_day, "--kind", "upsert", good).code == 0

    cases: list[tuple[list[str], str]] = [
        ([good, str(absent)], str(absent)), ([good, no_key], no_key),
        ([str(corrupt)], str(corrupt)), ([str(tmp_path / "*.csv")], "*.csv")]
    for paths, fault in cases:
        run = compactor("append", table_url, *in_day, "--kind", "upsert", *paths)
        assert run.code == 1, run
        [line] = run.err.splitlines()
        assert line.startswith("error: ") and fault in line, run
    assert compactor("append", table_url, *in_day, "--kind", "cdc", good).code == 1  # no Op
    copied = compactor("append", table_url, *in_day, "--kind", "upsert", "--copy", no_key)
    assert copied.code == 1 and no_key in copied.err, copied  # the user's file, not our copy
    data = Path(table_url) / "partitions" / "day=1" / "data"
    assert not data.exists() or not any(data.iterdir()), "a copy that did not commit is removed"
    assert compactor("history", table_url, *in_day, "--json").json()["head"] == 1  # unchanged

    unpartitioned = compactor("compact", table_url)
    assert unpartitioned.code == 2 and "pass --partition day=..." in unpartitioned.err
    wrong = compactor("compact", table_url, "-p", "region=eu")
    assert wrong.code == 1 and "partitioned by ['day']" in wrong.err
    # a partition nothing was appended to: one line naming the ones the table has, before any
    # work starts (compact used to start the runtime first)
    for command in (["history"], ["compact"], ["compact", "--dry-run"], ["show"], ["verify"],
                    ["read", "--to", tmp_path / "out"]):
        never = compactor(*command[:1], table_url, "-p", "day=2", *command[1:])
        assert never.code == 1 and never.err.count("\n") == 1, never
        assert "partition day=2" in never.err and "has no commits" in never.err, never
        assert "the table's partitions: day=1" in never.err, never
    # a partition as the CLI prints it (escaped) names it too
    odd = ["-p", "day=eu west/1%"]
    assert compactor("append", table_url, *odd, "--kind", "upsert", good).code == 0
    shown = compactor("history", table_url, "-p", "day=eu%20west%2F1%25")
    assert shown.code == 0 and "day=eu%20west%2F1%25" in shown.out, shown
    exists = compactor("table", "create", table_url, "-k", "id", "--schema", SCHEMA)
    assert exists.code == 1 and "already exists" in exists.err

    debug = compactor("show", missing_table, "--debug")
    assert debug.code == 1 and "Traceback" in debug.err and "TableNotFound" in debug.err


def test_help_explains_every_command_with_an_example() -> None:
    commands = [["table", "create"], ["append"], ["compact"], ["show"], ["history"],
                ["verify"], ["read"], ["demo"]]
    top = compactor("--help")
    assert top.code == 0 and "Exit codes" in top.out
    for name in ("append", "compact", "demo", "history", "read", "show", "table", "verify"):
        assert name in top.out
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda c: compactor(*c, "--help"), commands))
    for run in runs:
        assert run.code == 0, run
        assert "Example" in run.out and "--json" in run.out and "--endpoint-url" in run.out, run


def test_a_failure_shows_the_notes_that_say_which_file() -> None:
    """An I/O error keeps its type (jobs retry it); the file it was reading is in a note,
    which the one-line message carries."""
    from compactor.cli.common import Session

    error = ConnectionResetError(104, "Connection reset by peer")
    error.add_note("reading s3://lake/orders/part-7.parquet")
    session = Session(where="partition default of table s3://lake/orders")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert session.fail(error) == 1
    # (the file's URL names the table, so the command's "where" is not repeated)
    assert err.getvalue().strip() == (
        "error: ConnectionResetError: [Errno 104] Connection reset by peer "
        "(reading s3://lake/orders/part-7.parquet)")


def test_ctrl_c_while_the_commit_is_written_says_it_may_have_landed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from compactor.cli import main
    from compactor.fs import Storage

    url = str(tmp_path / "t")
    assert compactor("table", "create", url, "-k", "id", "--order-by", "lsn",
                     "--schema", SCHEMA).code == 0
    assert compactor("append", url, "--kind", "upsert", write_parquet(
        tmp_path / "a.parquet", upserts([1, 2, 3], "a", 0))).code == 0
    create = Storage.create

    def landed_then_interrupted(self: Storage, rel: str, data: bytes) -> None:
        create(self, rel, data)
        if "/_log/" in rel and b'"compaction"' in data:
            raise KeyboardInterrupt  # Ctrl-C before the answer came

    monkeypatch.setattr(Storage, "create", landed_then_interrupted)
    assert main(["compact", url]) == 130
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("interrupted while committing: commit 2 of partition"), err
    assert "whether it was committed is unknown" in err and "compactor history" in err
    assert compactor("append", url, "--kind", "upsert", write_parquet(
        tmp_path / "b.parquet", upserts([4], "b", 9))).code == 0
    assert main(["compact", url, "--json"]) == 130  # the JSON document of a failure too
    printed = json.loads(capsys.readouterr().out)
    assert (printed["ok"], printed["error_type"], printed["exit_code"]) == (
        False, "Interrupted", 130)
    assert printed["error"].startswith("interrupted while committing: commit 4 of partition")
    monkeypatch.undo()
    assert compactor("verify", url).code == 0  # they landed, and their files are there


def test_a_partition_of_two_columns_is_named_as_it_is_printed(tmp_path: Path) -> None:
    """``show`` prints day=1/region=eu%20west: -p takes that form too (it took commas only)."""
    url = str(tmp_path / "t")
    assert compactor("table", "create", url, "-k", "id", "--order-by", "lsn", "--partition-by",
                     "day,region", "--schema", SCHEMA + ",day:string,region:string").code == 0
    good = write_parquet(tmp_path / "good.parquet", upserts([1, 2], "a", 0))
    assert compactor("append", url, "-p", "day=1,region=eu west", "--kind", "upsert",
                     good).code == 0
    printed = "day=1/region=eu%20west"
    assert printed in compactor("show", url).out
    for command in (["history"], ["compact"], ["verify"]):
        run = compactor(command[0], url, "-p", printed)
        assert run.code == 0 and printed in run.out + run.err, run


def test_integer_op_values_given_both_meanings_are_a_usage_error(table_url: str,
                                                                 tmp_path: Path) -> None:
    """An integer op column: "1" and "01" are one value, given as upsert and as delete."""
    assert compactor("table", "create", table_url, "-k", "id", "--order-by", "lsn",
                     "--schema", SCHEMA).code == 0
    path = write_parquet(tmp_path / "cdc.parquet", {"op": [1, 2], **upserts([1, 2], "a", 0)})
    run = compactor("append", table_url, "--kind", "cdc", "--op-column", "op",
                    "--op-values", "1=upsert,01=delete,2=delete", path)
    assert run.code == 2 and "op value 1 is given as both upsert and delete" in run.err, run
