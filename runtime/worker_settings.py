"""Environment settings every worker process of a runtime starts with."""

from __future__ import annotations

import importlib

# How worker processes manage memory, unless the driver's environment says otherwise (local
# backend: worker_env; Ray: the environment a Ray it starts inherits, or the job's runtime_env
# on a cluster it joins). Tasks allocate and free buffers of hundreds of MB over and over; a
# page the process has never touched costs a fault (and zeroing) each time:
# - glibc hands every block over 32 MB back to the kernel on free, so the next one faults all
#   its pages in again: serve all blocks from the heap (mmap_max=0) and keep up to 512 MiB of
#   free memory at its top (trim_threshold) for the next task;
# - numpy asks for transparent huge pages on large arrays; where the kernel defragments on
#   demand (THP defrag=madvise) that stalls allocations in memory compaction.
# Measured on a 2-core machine, one 20M-row compaction round: kernel time 9.3 s -> 4.7 s, the
# round 14.0 s -> 11.8 s, an incremental round 2.9 s -> 1.8 s;
# - Arrow's buffers come from glibc too (its default, mimalloc, hands freed pages back to the
#   kernel on its own schedule, so each decoded file faults fresh pages in again): a 20M-row
#   round 9.9 s -> 9.0 s, an incremental round 1.83 s -> 1.52 s, kernel time 4.6 s -> 3.0 s;
# - numpy's OpenBLAS starts a thread per core in every process, and they spin on start-up
#   (1.2% of a round's CPU); a task is given its cores by num_cpus, so BLAS gets one thread.
# - glibc gives each thread that allocates its own arena (up to 8 per core), and each keeps
#   its own free memory: Arrow's reader threads in a materialize task left ~360 MB resident
#   per worker; two arenas: ~300 MB, the same speed (20M-row round, one run each).
# - pyarrow's bundled jemalloc (unused: Arrow allocates from glibc, above) starts a background
#   thread when pyarrow is imported; the local backend's zygote (runtime.local.zygote) forks
#   workers only from a process without threads.
WORKER_MEMORY_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=536870912:"
                      "glibc.malloc.arena_max=2",
    "NUMPY_MADVISE_HUGEPAGE": "0",
    "OPENBLAS_NUM_THREADS": "1",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}

# numpy sorts 64-bit words with x86-simd-sort, on AVX-512 where the CPU has it. On AMD Zen 4
# (family 19h with AVX-512) the store form of the compress instruction that kernel partitions
# with is microcoded: np.sort of 1M uint64 took 55 ms there with AVX-512 and 13-16 ms with
# its AVX2 kernel, 525K keys in 30 sorted runs 28 ms against 6.4 ms, and argsort 95 against
# 37 ms (numpy 2.4; 2.2 alike). Elementwise work barely moves (a 64-bit multiply is emulated
# on AVX2: the key digest 8.6 -> 10.9 ms per 1M keys). Workers on such a CPU start with
# numpy's AVX-512 kernels off (Zen 5, family 1Ah, does not have the defect; nor do Intel's).
ZEN4_CPU_FAMILY = 25


def slow_avx512_compress(cpuinfo: str) -> bool:
    """Whether the CPU described by ``cpuinfo`` (the text of /proc/cpuinfo) is an AMD Zen 4:
    AVX-512 whose compress-store is microcoded."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return (fields.get("vendor_id") == "AuthenticAMD"
            and fields.get("cpu family") == str(ZEN4_CPU_FAMILY)
            and "avx512f" in fields.get("flags", "").split())


def slow_avx512_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """``slow_avx512_compress`` of this machine's CPU (False where it cannot be read)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            return slow_avx512_compress(f.read())
    except OSError:
        return False


def _numpy_avx512_targets() -> list[str]:
    """numpy's AVX-512 dispatch targets, by the names of its installed version (2.4 groups
    them as X86_V4; older ones name AVX512_SKX and the rest), or none without numpy."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # 2.x, 1.x
        try:
            dispatch = importlib.import_module(module).__cpu_dispatch__
        except (ImportError, AttributeError):
            continue
        return [t for t in dispatch if t.startswith("AVX512") or t == "X86_V4"]
    return []


def cpu_settings(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, str]:
    """Settings for the CPU of this machine: ``NPY_DISABLE_CPU_FEATURES`` on a Zen 4 (above),
    else none (also where the CPU cannot be read)."""
    if not slow_avx512_cpu(cpuinfo_path):
        return {}
    targets = _numpy_avx512_targets()
    return {"NPY_DISABLE_CPU_FEATURES": " ".join(targets)} if targets else {}


def worker_settings() -> dict[str, str]:
    """What a worker on this machine starts with, unless the driver's environment sets it:
    ``WORKER_MEMORY_ENV`` and the CPU's settings (``cpu_settings``)."""
    return {**WORKER_MEMORY_ENV, **cpu_settings()}


# When an idle task worker of the local backend gives the free memory its heap keeps back to
# the system (see ``release_free_memory``; Ray's workers do not). The driver decides, as only it
# sees the whole runtime:
# - while other work runs (a round's hash tasks done and its dedupe actors folding, or a step's
#   last tasks running), a worker idle IDLE_TRIM_SECONDS gives its memory back: the memory its
#   tasks freed would otherwise stay counted against the machine beside the work that runs (a
#   full round's peak: about 110 MB lower). Between the tasks of a step a worker waits
#   milliseconds; the clock starts when the work starts, so a worker idle from before it is
#   not trimmed the moment the next round begins;
# - while nothing runs at all (between rounds, between a job's partitions), workers keep it for
#   QUIET_TRIM_SECONDS: the next round within that time starts warm instead of faulting its
#   memory in again (a 20M-row table's incremental round after the full one and a 3-4 s
#   pause, 10 alternating runs: medians 0.93 -> 0.835 s), and a runtime left idle gives it
#   back soon.
IDLE_TRIM_SECONDS = 0.5
QUIET_TRIM_SECONDS = 10.0


def release_free_memory() -> None:
    """Hand the free memory glibc keeps in this process's heaps back to the kernel
    (``malloc_trim``); a no-op without glibc. Costs the next allocations fresh page faults,
    so task workers call it only when the driver says they have idled long enough
    (IDLE_TRIM_SECONDS, QUIET_TRIM_SECONDS), never between tasks."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
