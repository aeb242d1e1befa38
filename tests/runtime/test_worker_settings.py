"""Settings workers start with for the CPU they run on (runtime.worker_settings)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import runtime
from runtime import worker_settings
from runtime.worker_settings import cpu_settings, slow_avx512_compress


def _cpuinfo(vendor: str, family: int, flags: str, processors: int = 2) -> str:
    block = textwrap.dedent(f"""\
        processor\t: {{n}}
        vendor_id\t: {vendor}
        cpu family\t: {family}
        model\t\t: 17
        model name\t: some CPU
        flags\t\t: fpu sse2 avx avx2 {flags}
        """)
    return "\n".join(block.format(n=n) for n in range(processors))


ZEN4 = _cpuinfo("AuthenticAMD", 25, "avx512f avx512dq avx512vl")


@pytest.mark.parametrize(("cpuinfo", "slow"), [
    (ZEN4, True),
    (_cpuinfo("AuthenticAMD", 25, "", processors=1), False),  # Zen 3: no AVX-512
    (_cpuinfo("AuthenticAMD", 26, "avx512f avx512dq"), False),  # Zen 5: a fast compress
    (_cpuinfo("GenuineIntel", 6, "avx512f avx512dq"), False),
    (_cpuinfo("AuthenticAMD", 25, "avx512fx"), False),  # a flag only like avx512f
    ("", False),
    ("garbage without fields\n", False),
])
def test_a_zen_4_is_told_apart_by_vendor_family_and_avx512(cpuinfo: str, slow: bool) -> None:
    assert slow_avx512_compress(cpuinfo) is slow


def _numpy_features(env: dict[str, str]) -> tuple[list[str], str]:
    """The AVX-512 features a new interpreter's numpy dispatches to, and what it warned."""
    code = ("import numpy; m = getattr(numpy, '_core', None) or numpy.core; "
            "f = m._multiarray_umath.__cpu_features__; "
            "print(' '.join(k for k, v in f.items() if v and ('512' in k or k == 'X86_V4')))")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split(), done.stderr


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86's features")
def test_on_a_zen_4_numpy_starts_without_its_avx512_kernels(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN4)
    settings = cpu_settings(str(path))
    assert list(settings) == ["NPY_DISABLE_CPU_FEATURES"]
    # named as this numpy names them (no warning), and every AVX-512 kernel off
    features, warned = _numpy_features(settings)
    assert not warned
    assert not [f for f in features if f in ("AVX512_SKX", "X86_V4", "AVX512_ICL")]


def test_other_cpus_and_an_unreadable_cpuinfo_get_no_cpu_settings(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(_cpuinfo("GenuineIntel", 6, "avx512f"))
    assert cpu_settings(str(path)) == {}
    assert cpu_settings(str(tmp_path / "missing")) == {}


@runtime.remote
def numpy_disabled() -> str | None:
    return os.environ.get("NPY_DISABLE_CPU_FEATURES")


def test_local_workers_start_with_the_cpu_settings_unless_the_driver_sets_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NPY_DISABLE_CPU_FEATURES", raising=False)
    monkeypatch.setattr(worker_settings, "cpu_settings",
                        lambda: {"NPY_DISABLE_CPU_FEATURES": "AVX512_ICL"})
    with runtime.init("local", num_cpus=1):
        assert runtime.get(numpy_disabled.remote()) == "AVX512_ICL"
    monkeypatch.setenv("NPY_DISABLE_CPU_FEATURES", "")  # the driver's word, even an empty one
    with runtime.init("local", num_cpus=1):
        assert runtime.get(numpy_disabled.remote()) == ""
