"""Options: declared once, validated everywhere, never mutating the decorated defaults."""

from __future__ import annotations

import pytest

import runtime
from runtime import options


@runtime.remote(num_cpus=1, max_retries=2)
def f(x: int) -> int:
    return x


@runtime.remote(max_restarts=1)
class A:
    def ping(self) -> str:
        return "pong"


def test_options_returns_new_wrapper_and_keeps_defaults():
    g = f.options(num_cpus=2, memory=1024)
    assert g is not f
    assert f._options == {"num_cpus": 1, "max_retries": 2}
    assert g._options == {"num_cpus": 2, "max_retries": 2, "memory": 1024}
    b = A.options(name="a1", max_concurrency=4)
    assert A._options == {"max_restarts": 1}
    assert b._options["name"] == "a1"


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        f.options(num_gpus=1)
    msg = str(info.value)
    assert "num_gpus" in msg
    for name in options.valid_names("task"):
        assert name in msg
    with pytest.raises(ValueError, match="unknown task option 'max_restarts'"):
        f.options(max_restarts=2)
    with pytest.raises(ValueError, match="unknown actor option 'max_retries'"):
        A.options(max_retries=2)
    with pytest.raises(ValueError, match="unknown task option"):
        runtime.remote(bogus=1)(lambda: None)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_cpus": -1}, "num_cpus"),
        ({"memory": 1.5}, "memory"),
        ({"max_retries": -2}, "max_retries"),
        ({"retry_exceptions": ["x"]}, "retry_exceptions"),
        ({"scheduling": "ANYWHERE"}, "scheduling"),
    ],
)
def test_bad_values_name_the_option(kwargs, fragment):
    with pytest.raises((ValueError, TypeError), match=fragment):
        f.options(**kwargs)


def test_actor_option_values_are_checked():
    with pytest.raises(ValueError, match="max_concurrency"):
        A.options(max_concurrency=0)
    with pytest.raises(ValueError, match="name"):
        A.options(name="")


def test_defaults_are_complete():
    task = options.resolve("task", {})
    assert task["num_cpus"] == 1 and task["max_retries"] == 3 and task["memory"] == 0
    assert task["retry_exceptions"] is False
    actor = options.resolve("actor", {})
    assert actor["max_restarts"] == 0 and actor["max_concurrency"] == 1


def test_using_the_api_before_init_is_a_clear_error():
    with pytest.raises(runtime.NotInitializedError, match=r"runtime\.init\(\)"):
        f.remote(1)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown runtime backend 'spark'"):
        runtime.init("spark")
