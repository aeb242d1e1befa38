"""The deployment files under infra/, as the tests read them."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CLUSTER_YAML = INFRA / "aws" / "cluster.yaml"
JOBS_YAML = INFRA / "aws" / "jobs.yaml"
SERVICE_POLICY = INFRA / "aws" / "iam-policy.json"
AUTOSCALER_POLICY = INFRA / "aws" / "iam-autoscaler-policy.json"
RAYCLUSTER_YAML = INFRA / "k8s" / "raycluster.yaml"
DOCKERFILE = INFRA / "k8s" / "Dockerfile"
GUIDE = INFRA / "README.md"

#: What a team must set, as it is written in the files (infra/README.md fills them in).
PLACEHOLDER = re.compile(r"CHANGE-ME-[a-z-]*[a-z]")
PLACEHOLDERS = {"CHANGE-ME-region", "CHANGE-ME-account-id", "CHANGE-ME-table-bucket",
                "CHANGE-ME-export-bucket", "CHANGE-ME-key-pair", "CHANGE-ME-subnet",
                "CHANGE-ME-registry"}


def cluster_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return config


def policy(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def package_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def wheel_name() -> str:
    """The file ``pip wheel --no-deps -w dist .`` writes (a pure-Python wheel)."""
    return f"compactor-{package_version()}-py3-none-any.whl"
