"""The IAM policies, the KubeRay manifest, the image and the job config: they parse, and they
grant, scope and pin what the deployment needs and no more."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import ray
import yaml

from compactor.cluster_sizing import load_cluster
from jobs.config import load_config
from tests.infra.deployment import (
    AUTOSCALER_POLICY,
    DOCKERFILE,
    GUIDE,
    INFRA,
    JOBS_YAML,
    PLACEHOLDER,
    PLACEHOLDERS,
    RAYCLUSTER_YAML,
    SERVICE_POLICY,
    cluster_config,
    package_version,
    policy,
    wheel_name,
)

TABLES = "arn:aws:s3:::CHANGE-ME-table-bucket/tables/*"
SOURCES = "arn:aws:s3:::CHANGE-ME-export-bucket/exports/*"
# What the storage layer (compactor/fs.py through s3fs) sends, and the permission each needs:
# GetObject and HeadObject (s3:GetObject), ListObjectsV2 (s3:ListBucket, which also turns a
# missing key's 403 into the 404 the commit log reads forward to), PutObject with and without
# If-None-Match and multipart uploads (s3:PutObject), a failed multipart upload's abort, and
# the deletion of a failed round's files.
SERVICE_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                   "s3:ListBucket"}
WRITES = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    assert document["Version"] == "2012-10-17"
    statements: list[dict[str, Any]] = document["Statement"]
    for s in statements:
        assert s["Effect"] == "Allow" and s["Sid"]
        assert not {"NotAction", "NotResource", "Principal"} & set(s), s["Sid"]
    assert len({s["Sid"] for s in statements}) == len(statements)
    return statements


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _grants(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(action, resource, condition) for every pair a policy allows."""
    return [(a, r, s.get("Condition", {})) for s in _statements(document)
            for a in _listed(s["Action"]) for r in _listed(s["Resource"])]


def test_the_service_policy_allows_only_the_s3_actions_compactor_uses() -> None:
    grants = _grants(policy(SERVICE_POLICY))
    assert {a for a, _, _ in grants} == SERVICE_ACTIONS
    assert not any("*" in a for a, _, _ in grants)


def test_writes_are_scoped_to_the_table_prefix_and_sources_are_read_only() -> None:
    grants = _grants(policy(SERVICE_POLICY))
    assert {r for a, r, _ in grants if a in WRITES} == {TABLES}
    assert {r for a, r, _ in grants if a == "s3:GetObject"} == {TABLES, SOURCES}
    # listing names buckets; the sources' listing is held to their prefix
    lists = {r: c for a, r, c in grants if a == "s3:ListBucket"}
    assert set(lists) == {"arn:aws:s3:::CHANGE-ME-table-bucket",
                          "arn:aws:s3:::CHANGE-ME-export-bucket"}
    assert lists["arn:aws:s3:::CHANGE-ME-export-bucket"] == {
        "StringLike": {"s3:prefix": ["exports", "exports/*"]}}
    # the table prefix is where the cluster's and the job config's tables live
    lake = next(o for o in cluster_config()["docker"]["run_options"] if "COMPACTOR_LAKE" in o)
    assert "arn:aws:s3:::" + lake.split("=s3://")[1] + "/*" == TABLES
    jobs = load_config(JOBS_YAML).jobs
    assert jobs and all(j.table.startswith("s3://CHANGE-ME-table-bucket/tables/") for j in jobs)


def test_the_autoscaler_policy_launches_and_ends_only_this_clusters_workers() -> None:
    grants = _grants(policy(AUTOSCALER_POLICY))
    actions = {a for a, _, _ in grants}
    assert actions == {"ec2:DescribeInstances", "ec2:RunInstances", "ec2:CreateTags",
                       "ec2:TerminateInstances", "iam:PassRole", "iam:CreateServiceLinkedRole"}
    name = cluster_config()["cluster_name"]
    terminate = [c for a, _, c in grants if a == "ec2:TerminateInstances"]
    assert terminate == [{"StringEquals": {"ec2:ResourceTag/ray-cluster-name": name}}]
    # tags: at launch, or on this cluster's own instances
    assert all(c in ({"StringEquals": {"ec2:CreateAction": "RunInstances"}},
                     {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": name}})
               for a, _, c in grants if a == "ec2:CreateTags")
    # the head hands the workers their role, and no other
    worker_profile = {t["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
                      for n, t in cluster_config()["available_node_types"].items()
                      if n != cluster_config()["head_node_type"]}
    assert [r.rsplit("/", 1)[1] for a, r, _ in grants if a == "iam:PassRole"] == \
        sorted(worker_profile)
    assert not any(a.startswith("s3:") for a in actions)  # S3 is the service policy's


def _raycluster() -> tuple[dict[str, Any], dict[str, Any]]:
    account, cluster = yaml.safe_load_all(RAYCLUSTER_YAML.read_text())
    assert account["kind"] == "ServiceAccount" and cluster["kind"] == "RayCluster"
    assert cluster["apiVersion"] == "ray.io/v1"
    return account, cluster


def _gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Gi|Mi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) / (1024 if unit == "Mi" else 1)


def test_the_raycluster_autoscales_in_tree_with_memory_optimized_workers() -> None:
    account, cluster = _raycluster()
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["autoscalerOptions"]["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["headGroupSpec"]["rayStartParams"]["memory"] == "0"
    groups = spec["workerGroupSpecs"]
    assert [g["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"]
            for g in groups] == ["ON_DEMAND", "SPOT"]
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        (container,) = g["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]  # Ray sizes itself by the limits
        assert _gib(resources["limits"]["memory"]) / int(resources["limits"]["cpu"]) >= 8
    assert groups[0]["minReplicas"] >= 1  # a round starts at once
    # every pod runs as the service account whose IAM role holds the service policy
    name = account["metadata"]["name"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in groups]
    assert all(p["serviceAccountName"] == name for p in pods)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(
        ":role/compactor-worker")


def test_the_image_pins_ray_and_the_project_version() -> None:
    _, cluster = _raycluster()
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    assert {c["image"] for c in containers} == {
        f"CHANGE-ME-registry/compactor:{package_version()}"}
    env = {e["name"]: e["value"] for e in containers[0]["env"]}
    assert env["COMPACTOR_BACKEND"] == "ray" and env["COMPACTOR_ADDRESS"] == "auto"
    dockerfile = DOCKERFILE.read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-cpu" in dockerfile
    assert f"/tmp/dist/{wheel_name()}[ray]" in dockerfile


def test_the_guide_fills_in_every_placeholder() -> None:
    used = set()
    for path in INFRA.rglob("*"):
        if path.is_file() and path != GUIDE:
            used |= set(PLACEHOLDER.findall(path.read_text()))
    assert used == PLACEHOLDERS
    guide = GUIDE.read_text()
    for placeholder in PLACEHOLDERS:
        assert re.search(rf"-e \"s([/|]){placeholder}\1", guide), \
            f"infra/README.md does not fill in {placeholder}"


def test_the_guides_fill_in_command_leaves_nothing_to_change(tmp_path: Path) -> None:
    block = next(b for b in re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S)
                 if "sed -i" in b)
    shutil.copytree(INFRA, tmp_path / "infra")
    done = subprocess.run(["bash", "-euc", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "all set", done
    filled = tmp_path / "infra" / "aws" / "cluster.yaml"
    text = filled.read_text()
    assert "region: eu-west-1" in text and "SubnetIds: [subnet-0123456789abcdef0]" in text
    assert "arn:aws:iam::123456789012:instance-profile/compactor-worker" in text
    assert load_cluster(filled).name == "compactor"
    assert "arn:aws:s3:::acme-lake/tables/*" in (tmp_path / SERVICE_POLICY.relative_to(
        INFRA.parent)).read_text()
