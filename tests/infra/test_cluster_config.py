"""infra/aws/cluster.yaml: valid for Ray's own cluster launcher, and shaped for compaction.

Ray's validation is what ``ray up`` runs before it contacts AWS: ``prepare_config`` (merge with
the AWS provider's defaults.yaml, setup commands, per-type min/max workers) then
``validate_config`` (ray-schema.json plus the cross-field checks), both from
``ray.autoscaler._private.util``. Neither needs AWS: the test runs them with every socket
connection refused. (``ray up`` also fills node resources from EC2's DescribeInstanceTypes
between the two; that call needs AWS and only warns when it fails, so it is left out.)
"""

from __future__ import annotations

import copy
import re
import socket
from typing import Any

import jsonschema
import pytest
import ray
from ray.autoscaler._private.util import prepare_config, validate_config

from compactor.cluster_sizing import INSTANCE_TYPES, GiB, load_cluster, parse_cluster
from tests.infra.deployment import (
    CLUSTER_YAML,
    PLACEHOLDER,
    PLACEHOLDERS,
    cluster_config,
    package_version,
    wheel_name,
)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach a network service fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def ray_validated(config: dict[str, Any]) -> dict[str, Any]:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_ray_validates_the_cluster_config_offline(offline: None) -> None:
    prepared = ray_validated(cluster_config())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0
    # the common setup command reaches both the head and the workers
    install = f'"$HOME/compactor-wheels/{wheel_name()}[ray]"'
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert any(install in c for c in commands)


@pytest.mark.parametrize(("break_it", "error"), [
    (lambda c: c["available_node_types"]["worker-spot"].pop("resources"),
     jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="nope"), ValueError),
    (lambda c: c.update(max_workers=0), ValueError),  # below the sum of min_workers
    (lambda c: c.update(idle_timeout_minutes="soon"), jsonschema.ValidationError),
])
def test_ray_rejects_a_broken_variant(offline: None, break_it: Any, error: type) -> None:
    config = cluster_config()
    break_it(config)
    with pytest.raises(error):
        ray_validated(config)


def test_head_node_runs_the_driver_and_no_tasks() -> None:
    config = cluster_config()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "memory": 0}
    assert "min_workers" not in head and "max_workers" not in head
    assert "--head" in " ".join(config["head_start_ray_commands"])
    assert "--autoscaling-config" in " ".join(config["head_start_ray_commands"])


def test_worker_types_are_memory_optimized_one_on_demand_one_spot() -> None:
    config = cluster_config()
    workers = {n: t for n, t in config["available_node_types"].items()
               if n != config["head_node_type"]}
    markets = sorted((t["node_config"].get("InstanceMarketOptions") or {}).get(
        "MarketType", "on-demand") for t in workers.values())
    assert markets == ["on-demand", "spot"]
    for name, t in workers.items():
        instance = t["node_config"]["InstanceType"]
        assert instance.startswith(("r5.", "r6i.", "r6a.", "r7i.")), (name, instance)
        vcpus, ram_gib = INSTANCE_TYPES[instance]
        assert ram_gib / vcpus >= 8, f"{name}: {instance} has {ram_gib / vcpus:g} GiB per vCPU"
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert sum(t["min_workers"] for t in workers.values()) <= config["max_workers"]
    # a round starts at once: a worker that any task fitting a worker type also fits is up
    up = [t for t in workers.values() if t["min_workers"] > 0]
    assert up and all(t["node_config"]["InstanceType"] == up[0]["node_config"]["InstanceType"]
                      for t in workers.values())


def test_scaling_settings_are_explicit() -> None:
    config = cluster_config()
    assert config["max_workers"] >= 1
    assert config["idle_timeout_minutes"] > 0
    assert config["upscaling_speed"] > 0
    assert config["provider"]["cache_stopped_nodes"] is False


def test_every_node_type_has_an_instance_profile_and_the_head_its_own() -> None:
    config = cluster_config()
    profiles = {n: t["node_config"]["IamInstanceProfile"]["Arn"]
                for n, t in config["available_node_types"].items()}
    head = profiles.pop(config["head_node_type"])
    assert head.endswith(":instance-profile/compactor-head")
    assert set(profiles.values()) == {head.replace("compactor-head", "compactor-worker")}


def test_the_project_is_installed_at_the_pinned_version_with_the_ray_extra() -> None:
    config = cluster_config()
    setup = " ".join(config["setup_commands"])
    pinned = re.findall(r"compactor-(\d[^-]*)-py3-none-any\.whl\[ray\]", setup)
    assert pinned == [package_version()]
    assert config["file_mounts"]["~/compactor-wheels"] == "./dist"
    image, tag = config["docker"]["image"].split(":")
    assert image == "rayproject/ray"
    assert tag == f"{ray.__version__}-py311-cpu"  # `ray up` needs the same Ray on both ends


def test_the_values_to_change_are_placeholders_on_marked_lines() -> None:
    text = CLUSTER_YAML.read_text()
    found = set(PLACEHOLDER.findall(text))
    assert found == PLACEHOLDERS - {"CHANGE-ME-export-bucket", "CHANGE-ME-registry"}
    for line in text.splitlines():
        if PLACEHOLDER.search(line) and not line.lstrip().startswith("#"):
            assert "# CHANGE:" in line or "Arn:" in line, line  # Arn lines: comment above
    lake = next(o for o in cluster_config()["docker"]["run_options"] if "COMPACTOR_LAKE" in o)
    assert lake.endswith("=s3://CHANGE-ME-table-bucket/tables")


def test_compactor_reads_the_same_node_types() -> None:
    cluster = load_cluster(CLUSTER_YAML)
    assert cluster.name == cluster_config()["cluster_name"]
    assert cluster.head.cpus == 0 and cluster.head.memory == 0
    for t in cluster.workers:
        assert t.ram is not None and t.ram / t.cpus >= 8 * GiB
        assert t.memory == int(0.7 * t.ram)  # what Ray's autoscaler advertises for the type
    assert cluster.idle_cpus == 8  # one r6i.2xlarge always up: a round's dedupe actors


def test_compactor_reads_the_config_ray_prepared_as_the_one_given(offline: None) -> None:
    """On the head, `compactor plan --cluster ~/ray_bootstrap_config.yaml` reads what `ray up`
    wrote there: the prepared config, worker resources filled in from the instance types."""
    prepared = ray_validated(cluster_config())
    given = load_cluster(CLUSTER_YAML)
    for t in given.workers:
        prepared["available_node_types"][t.name]["resources"] = {"CPU": int(t.cpus),
                                                                 "memory": t.memory}
    assert parse_cluster(prepared, str(CLUSTER_YAML)) == given
