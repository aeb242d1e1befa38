"""The job config: a full example parses to what it says; every mistake names its line and field."""

from __future__ import annotations

import json
import socket
import textwrap
import urllib.request
from datetime import date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import jobs
from jobs.config import ConfigError, Partitions, load_config, parse_config
from jobs.yamlfields import parse_duration

FULL = """\
history: runs/jobs.sqlite
metrics: 127.0.0.1:9464
scheduler:
  tick: 15s
  concurrency: 3
  lease_ttl: 2m
  shutdown_grace: 0
jobs:
  - name: orders
    table: s3://lake/orders
    storage_options: {endpoint_url: "http://127.0.0.1:9000"}
    partitions: {pattern: "day=2024-05-*"}
    triggers:
      cron: "*/15 * * * *"
      timezone: Europe/Berlin
      pending_deltas: 20
      pending_bytes: 1GiB
      oldest_delta_age: 1h30m
    backend: ray
    address: auto
    target_file_size: 512MB
    compression: lz4
    retries: {max: 5, backoff: 2s, max_backoff: 5m}
    timeout: 30m
    concurrency: 2
  - name: users
    table: /data/users
    partitions: ["region=eu", {region: us}]
    triggers: {pending_deltas: 1}
    retries: 0
"""


def test_a_full_config_parses_to_what_it_says(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.history == str(tmp_path / "runs/jobs.sqlite")  # relative to the file
    assert config.metrics == ("127.0.0.1", 9464)
    assert (config.tick, config.concurrency, config.lease_ttl, config.shutdown_grace) == \
        (15, 3, 120, 0)
    orders, users = config.jobs
    assert orders.table == "s3://lake/orders"
    assert orders.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}
    assert orders.partitions == Partitions(pattern="day=2024-05-*")
    t = orders.triggers
    assert (t.cron, t.timezone, t.pending_deltas, t.pending_bytes, t.oldest_delta_age) == \
        ("*/15 * * * *", "Europe/Berlin", 20, 2**30, 5400)
    assert (orders.backend, orders.address, orders.runtime_key) == ("ray", "auto",
                                                                    ("ray", "auto"))
    assert (orders.target_file_size, orders.compression) == (512 * 10**6, "lz4")
    assert (orders.retries.max, orders.retries.backoff, orders.retries.max_backoff) == \
        (5, 2, 300)
    assert (orders.timeout, orders.concurrency) == (1800, 2)
    assert users.partitions.values == ({"region": "eu"}, {"region": "us"})
    assert users.retries.max == 0 and users.backend is None and users.timeout is None


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMPACTOR_JOBS_HISTORY", str(tmp_path / "h.sqlite"))
    config = parse_config("jobs: [{name: a, table: /t, triggers: {pending_deltas: 1}}]")
    assert config.history == str(tmp_path / "h.sqlite") and config.metrics is None
    (job,) = config.jobs
    assert job.partitions == Partitions() and job.partitions.describe() == "all"
    assert job.retries.max == 3 and job.target_file_size == 256 << 20
    assert job.compression == "zstd"


@pytest.mark.parametrize("value, seconds", [(90, 90), (1.5, 1.5), ("90s", 90), ("15m", 900),
                                            ("1h30m", 5400), ("2d", 172800), ("250ms", 0.25)])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10**400, "nan",
                                   "inf", "-Infinity", "1" + "0" * 400],
                         ids=["nan", "inf", "-inf", "10**400", "'nan'", "'inf'", "'-Infinity'",
                              "'1e400'"])
def test_a_duration_is_a_finite_number_of_seconds(value: object) -> None:
    with pytest.raises(ValueError, match="must be a finite number of seconds"):
        parse_duration(value)


@pytest.mark.parametrize("metrics, expected", [
    ("9464", ("127.0.0.1", 9464)), ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ("{address: 127.0.0.1, port: 0}", ("127.0.0.1", 0)),
    # an IPv6 address is written in brackets before its port, and bound without them
    ('"[::1]:9464"', ("::1", 9464)), ('"[::]:0"', ("::", 0)),
    ('{address: "[::1]", port: 0}', ("::1", 0)), ('{address: "::1", port: 0}', ("::1", 0)),
])
def test_metrics_forms(metrics: str, expected: tuple[str, int]) -> None:
    config = parse_config(f"metrics: {metrics}\n"
                          "jobs: [{name: a, table: /t, triggers: {pending_deltas: 1}}]")
    assert config.metrics == expected


JOB = "jobs:\n  - name: a\n    table: /t\n"

# (config text, the message must contain): each names FILE:LINE and the field at fault
BAD = [
    ("", "jobs.yaml: the file is empty"),
    ("- a\n- b\n", "jobs.yaml:1: the document must be a mapping"),
    ("jobs: [\n", "jobs.yaml:2:1: not valid YAML"),
    ("history: a\nhistory: b\njobs: []\n", "jobs.yaml:2:1: not valid YAML: key 'history' "
                                           "appears twice"),
    ("histroy: a\n" + JOB, "jobs.yaml:1: histroy: unknown field; valid fields here: history"),
    ("history: a\n", "jobs.yaml:1: config: missing required field 'jobs'"),
    ("jobs: []\n", "jobs.yaml:1: jobs: needs at least one job"),
    ("jobs:\n  - just-a-name\n", "jobs.yaml:2: jobs[0]: expected a mapping, got str"),
    ("jobs:\n  - name: a\n    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:2: jobs[0]: missing required field 'table'"),
    (JOB, "jobs.yaml:2: jobs[0]: missing required field 'triggers'"),
    (JOB + "    triggers: {}\n", "jobs.yaml:4: jobs[0].triggers: needs at least one trigger"),
    (JOB + "    triggers:\n      cron: every hour\n",
     "jobs.yaml:5: jobs[0].triggers.cron: 'every hour' is not a valid cron expression"),
    (JOB + "    triggers:\n      cron: 0 * * * *\n      timezone: Mars/Olympus\n",
     "jobs.yaml:6: jobs[0].triggers.timezone: unknown time zone 'Mars/Olympus'"),
    (JOB + "    triggers:\n      pending_deltas: many\n",
     "jobs.yaml:5: jobs[0].triggers.pending_deltas: expected a whole number, got str 'many'"),
    (JOB + "    triggers:\n      pending_deltas: 0\n",
     "jobs.yaml:5: jobs[0].triggers.pending_deltas: 0 is less than 1"),
    (JOB + "    triggers:\n      pending_bytes: 1 parsec\n",
     "jobs.yaml:5: jobs[0].triggers.pending_bytes: '1 parsec' is not a size"),
    (JOB + "    triggers:\n      oldest_delta_age: soon\n",
     "jobs.yaml:5: jobs[0].triggers.oldest_delta_age: 'soon' is not a duration"),
    (JOB + "    triggers: {pending_deltas: 1}\n    trigger: {}\n",
     "jobs.yaml:5: jobs[0].trigger: unknown field; valid fields here: name, table"),
    ("jobs:\n  - name: a\n    table: memory://t\n    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:3: jobs[0].table: 'memory://t': protocol 'memory' is not supported"),
    (JOB + "    triggers: {pending_deltas: 1}\n    backend: local\n    address: auto\n",
     "jobs.yaml:6: jobs[0].address: the local backend takes no address"),
    (JOB + "    triggers: {pending_deltas: 1}\n    backend: spark\n",
     "jobs.yaml:5: jobs[0].backend: 'spark' is not one of local, ray"),
    (JOB + "    triggers: {pending_deltas: 1}\n    partitions: day=2024-*\n",
     "jobs.yaml:5: jobs[0].partitions: 'day=2024-*': write 'all', a list of partitions, or "
     "{pattern: 'day=2024-*'}"),
    (JOB + "    triggers: {pending_deltas: 1}\n    partitions:\n      - day=1\n      - 7\n",
     "jobs.yaml:7: jobs[0].partitions[1]: 7 is not a partition"),
    (JOB + "    triggers: {pending_deltas: 1}\n    retries: {max: -1}\n",
     "jobs.yaml:5: jobs[0].retries.max: -1 is less than 0"),
    (JOB + "    triggers: {pending_deltas: 1}\n    retries: {backoff: 10s, max_backoff: 1s}\n",
     "jobs.yaml:5: jobs[0].retries.max_backoff: 1s is less than the backoff 10s"),
    (JOB + "    triggers: {pending_deltas: 1}\n    timeout: 0\n",
     "jobs.yaml:5: jobs[0].timeout: 0 must be positive"),
    (JOB + "    triggers: {pending_deltas: 1}\n    target_file_size: big\n",
     "jobs.yaml:5: jobs[0].target_file_size: 'big' is not a size"),
    (JOB + "    triggers: {pending_deltas: 1}\n    compression: lzo\n",
     "jobs.yaml:5: jobs[0].compression: 'lzo' is not one of zstd, lz4, snappy, gzip, brotli, "
     "none"),
    (JOB + "    triggers: {pending_deltas: 1}\n  - name: a\n    table: /u\n"
           "    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:5: jobs[1].name: job name 'a' is used twice (first at line 2)"),
    ("scheduler: {concurrency: 0}\n" + JOB,
     "jobs.yaml:1: scheduler.concurrency: 0 is less than 1"),
    ("metrics: {port: 99999}\n" + JOB + "    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:1: metrics: port 99999 is not between 0 and 65535"),
    # a well-formed cron expression that names no date would fail at every evaluation
    (JOB + '    triggers:\n      cron: "0 0 30 2 *"\n',
     "jobs.yaml:5: jobs[0].triggers.cron: '0 0 30 2 *' never fires: no date matches"),
    (JOB + '    triggers:\n      cron: "0 0 31 4 *"\n',
     "jobs.yaml:5: jobs[0].triggers.cron: '0 0 31 4 *' never fires"),
    # croniter reads a sixth field as seconds, a seventh as the year: not what the docs say
    (JOB + '    triggers:\n      cron: "0 0 * * * 0"\n',
     "jobs.yaml:5: jobs[0].triggers.cron: '0 0 * * * 0' has 6 fields, but seconds and year "
     "fields are not supported; write five fields"),
    (JOB + '    triggers:\n      cron: "0 0 1 1 * 0 2030"\n',
     "jobs.yaml:5: jobs[0].triggers.cron: '0 0 1 1 * 0 2030' has 7 fields"),
    (JOB + '    triggers:\n      cron: "@often"\n',
     "jobs.yaml:5: jobs[0].triggers.cron: '@often' is not a valid cron expression (five "
     "fields"),
    # nan and infinity: a dead lease keeper, leases that never exclude, OverflowError
    ("scheduler: {lease_ttl: .nan}\n" + JOB + "    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:1: scheduler.lease_ttl: nan is not a duration: it must be a finite number of "
     "seconds"),
    ("scheduler: {tick: .inf}\n" + JOB + "    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:1: scheduler.tick: inf is not a duration: it must be a finite number"),
    ("scheduler: {tick: 1e300}\n" + JOB + "    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:1: scheduler.tick: '1e300' is longer than 100 years"),
    (JOB + "    triggers:\n      oldest_delta_age: nan\n",
     "jobs.yaml:5: jobs[0].triggers.oldest_delta_age: 'nan' is not a duration: it must be a "
     "finite number of seconds"),
    (JOB + "    triggers: {pending_deltas: 1}\n    timeout: infinity\n",
     "jobs.yaml:5: jobs[0].timeout: 'infinity' is not a duration"),
    (JOB + "    triggers: {pending_deltas: 1}\n    retries: {backoff: .inf}\n",
     "jobs.yaml:5: jobs[0].retries.backoff: inf is not a duration"),
    # partition values no partition can have
    (JOB + "    triggers: {pending_deltas: 1}\n    partitions:\n      - {day: null}\n",
     "jobs.yaml:6: jobs[0].partitions[0].day: null is not a partition value"),
    (JOB + "    triggers: {pending_deltas: 1}\n    partitions:\n      - day=1\n"
           "      - region: eu\n        day: [1, 2]\n",
     "jobs.yaml:8: jobs[0].partitions[1].day: a list [1, 2] is not a partition value"),
    (JOB + "    triggers: {pending_deltas: 1}\n    partitions: [{day: 1.5}]\n",
     "jobs.yaml:5: jobs[0].partitions[0].day: float 1.5 is not a partition value"),
    (JOB + "    triggers: {pending_deltas: 1}\n    partitions: [{day: {a: b}}]\n",
     "jobs.yaml:5: jobs[0].partitions[0].day: a mapping {'a': 'b'} is not a partition value"),
    (JOB + "    triggers: {pending_deltas: 1}\n    partitions: [{7: a}]\n",
     "jobs.yaml:5: jobs[0].partitions[0].7: 7 is not a partition column name"),
    # a merged key may be overridden once; an explicit key given twice is still a mistake
    ("base: &b {name: a}\njobs:\n  - <<: *b\n    name: x\n    name: y\n",
     "jobs.yaml:5:5: not valid YAML: key 'name' appears twice"),
    # an IPv6 address with a port needs its brackets ('::1:9464' is an address of its own)
    ('metrics: "::1:9464"\n' + JOB + "    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:1: metrics: write the IPv6 address in brackets before the port, e.g. "
     "[::1]:9464"),
    ('metrics: "[localhost]:9464"\n' + JOB + "    triggers: {pending_deltas: 1}\n",
     "jobs.yaml:1: metrics: '[localhost]' is not an IPv6 address"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(": ", 1)[1][:40] for _, m in BAD])
def test_a_mistake_is_one_line_naming_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "jobs.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_the_loader_is_safe() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("history: !!python/object/apply:os.system ['true']\n" + JOB)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read the job config"):
        load_config(tmp_path / "nope.yaml")


# -- compactor jobs validate ---------------------------------------------------------------------
def test_validate_shows_the_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(FULL)
    result = CliRunner().invoke(jobs, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: OK, 2 job(s)" in result.output
    assert "orders: s3://lake/orders (partitions: matching 'day=2024-05-*') when cron " \
           "'*/15 * * * *' (Europe/Berlin), or pending deltas >= 20" in result.output
    result = CliRunner().invoke(jobs, ["validate", str(path), "--json"])
    info = json.loads(result.output)
    assert info["ok"] and [j["name"] for j in info["jobs"]] == ["orders", "users"]
    assert info["jobs"][1]["partitions"] == "region=eu, region=us"
    assert [j["compression"] for j in info["jobs"]] == ["lz4", "zstd"]


def test_validate_reports_a_bad_config_with_exit_code_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""\
        jobs:
          - name: a
            table: /t
            triggers: {cron: "61 * * * *"}
        """))
    result = CliRunner().invoke(jobs, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"error: {path}:4: jobs[0].triggers.cron: '61 * * * *' is not a valid cron " \
           "expression" in result.output
    result = CliRunner().invoke(jobs, ["validate", str(path), "--json"])
    first = json.loads(result.output.splitlines()[0])
    assert first["ok"] is False and first["error_type"] == "ConfigError"


def test_endpoint_url_applies_to_s3_jobs_without_one(tmp_path: Path) -> None:
    from compactor.cli.common import Session
    from jobs.cli import _config

    path = tmp_path / "jobs.yaml"
    path.write_text(FULL)
    orders, users = _config(Session(endpoint_url="http://127.0.0.1:1"), str(path)).jobs
    assert orders.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}  # its own wins
    assert users.storage_options == {}  # not on S3
    path.write_text(FULL.replace('    storage_options: {endpoint_url: "http://127.0.0.1:9000"}\n',
                                 ""))
    orders, _ = _config(Session(endpoint_url="http://127.0.0.1:1"), str(path)).jobs
    assert orders.storage_options == {"endpoint_url": "http://127.0.0.1:1"}


def test_a_merge_key_brings_fields_in_and_explicit_keys_override_them() -> None:
    """Standard YAML merge keys, as ``yaml.safe_load`` reads them."""
    text = textwrap.dedent("""\
        jobs:
          - &base
            name: a
            table: /t1
            triggers: {pending_deltas: 1}
            retries: {max: 5}
          - <<: *base
            name: b
            table: /t2
            bogus: 1
        """)
    with pytest.raises(ConfigError, match=r"^jobs.yaml:10: jobs\[1\].bogus: unknown field"):
        parse_config(text, "jobs.yaml")  # an override keeps its own line
    a, b = parse_config(text.replace("    bogus: 1\n", ""), "jobs.yaml").jobs
    assert (a.name, a.table, b.name, b.table) == ("a", "/t1", "b", "/t2")
    assert b.retries.max == 5 and b.triggers == a.triggers


def test_partition_values_of_every_kind_a_partition_can_have() -> None:
    text = JOB + ("    triggers: {pending_deltas: 1}\n    partitions:\n"
                  "      - {day: 2024-05-01, n: 7, flag: true, at: 2024-05-01T10:00:00, "
                  "region: eu}\n")
    (job,) = parse_config(text, "jobs.yaml").jobs
    assert job.partitions.values == ({"day": date(2024, 5, 1), "n": 7, "flag": True,
                                      "at": datetime(2024, 5, 1, 10), "region": "eu"},)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_metrics_serve_on_a_bracketed_ipv6_address() -> None:
    from jobs.metrics import Metrics

    config = parse_config('metrics: "[::1]:0"\n' + JOB + "    triggers: {pending_deltas: 1}\n")
    assert config.metrics is not None
    metrics = Metrics()
    try:
        url = metrics.serve(*config.metrics)
        assert url.startswith("http://[::1]:") and url.endswith("/metrics")
        assert b"compactor_jobs" in urllib.request.urlopen(url, timeout=10).read()
    finally:
        metrics.close()


def test_jobs_run_names_the_config_line_when_the_metrics_address_cannot_be_served(
        tmp_path: Path) -> None:
    """A port that is taken (as a host that does not resolve): the config's mistake, at its
    line, not a bare socket error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "jobs.yaml"
        path.write_text(f"history: {tmp_path}/h.sqlite\nmetrics: 127.0.0.1:{port}\n"
                        + JOB + "    triggers: {pending_deltas: 1}\n")
        result = CliRunner().invoke(jobs, ["run", str(path)])
    assert result.exit_code == 1, result.output
    assert f"error: {path}:2: metrics: cannot serve metrics at '127.0.0.1' port {port}: " \
           in result.stderr


@pytest.mark.parametrize("cron", ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"])
def test_croniters_shortcuts_are_five_field_expressions(cron: str) -> None:
    text = f"jobs:\n  - name: a\n    table: /t\n    triggers: {{cron: '{cron}'}}\n"
    [job] = parse_config(text, "jobs.yaml").jobs
    assert job.triggers.cron == cron


@pytest.mark.parametrize("metrics, shown", [("[::1]:9464", "[::1]:9464"),
                                            ("127.0.0.1:9464", "127.0.0.1:9464")])
def test_validate_shows_the_metrics_address_as_the_config_takes_it(
        tmp_path: Path, metrics: str, shown: str) -> None:
    """An IPv6 address in brackets (it showed '::1:9464', which the config refuses)."""
    path = tmp_path / "jobs.yaml"
    path.write_text(f'metrics: "{metrics}"\n' + JOB + "    triggers: {pending_deltas: 1}\n")
    info = json.loads(CliRunner().invoke(jobs, ["validate", str(path), "--json"]).output)
    assert info["metrics"] == shown
    path.write_text(f'metrics: "{info["metrics"]}"\n' + JOB + "    triggers: {pending_deltas: 1}\n")
    assert CliRunner().invoke(jobs, ["validate", str(path)]).exit_code == 0


def test_a_job_on_the_environments_backend_joins_its_address_whatever_its_case(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """COMPACTOR_BACKEND=Ray runs rounds on Ray (runtime.init lower-cases it): the job's
    runtime key is Ray's and takes $COMPACTOR_ADDRESS (it kept 'Ray', not one of the backends
    that join an address, and dropped the address)."""
    monkeypatch.setenv("COMPACTOR_JOBS_HISTORY", str(tmp_path / "h.sqlite"))
    monkeypatch.setenv("COMPACTOR_BACKEND", "Ray")
    monkeypatch.setenv("COMPACTOR_ADDRESS", "ray://head:10001")
    config = parse_config("jobs: [{name: a, table: /t, triggers: {pending_deltas: 1}}]")
    assert config.jobs[0].runtime_key == ("ray", "ray://head:10001")
