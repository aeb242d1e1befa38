"""Environment settings every worker process of a runtime starts with."""

from __future__ import annotations

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

# A task worker of the local backend idle this long gives the free memory its heap keeps back
# to the system (see ``release_free_memory``; Ray's workers do not). Between the tasks of a
# step a worker waits milliseconds; between steps (a round's hash tasks done, its dedupe actors
# folding) or rounds it waits seconds, and the memory its tasks freed would otherwise stay
# counted against the machine meanwhile.
IDLE_TRIM_SECONDS = 0.5


def release_free_memory() -> None:
    """Hand the free memory glibc keeps in this process's heaps back to the kernel
    (``malloc_trim``); a no-op without glibc. Costs the next allocations fresh page faults,
    so task workers call it only when idle (IDLE_TRIM_SECONDS), never between tasks."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
