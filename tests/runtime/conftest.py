"""Every runtime test runs against each backend, through the ``rt`` fixture.

``rt`` yields the ``runtime`` module initialized on one backend and shuts it down afterwards.
The local backend starts fresh per test (it starts in well under a second); Ray is started once
per test session (its start-up takes seconds) and each test connects to that instance.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

import runtime

BACKENDS = ["local", "ray"]


def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "ray":
        if not _ray_available():
            pytest.fail("ray is not installed; install the test extras with the ray extra")
        request.getfixturevalue("ray_instance")
    return name


@pytest.fixture
def rt(backend_name: str) -> Iterator[object]:
    with runtime.init(backend_name, num_cpus=2 if backend_name == "local" else None):
        yield runtime
