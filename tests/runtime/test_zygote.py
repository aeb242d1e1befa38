"""The local backend forks its workers from a zygote that imported the ``preload`` modules once;
whatever becomes of the zygote, workers still start, their deaths are told as before, and
nothing is left behind."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

import runtime
from runtime.local.processes import UNKNOWN_EXIT, ForkedProc


def _where() -> tuple[int, int | None, bool]:
    """This worker's pid, the pid that imported _preloaded (None: not imported yet), and
    whether numpy was imported before this task ran."""
    module = sys.modules.get("tests.runtime._preloaded")
    return os.getpid(), getattr(module, "LOADED_BY", None), "numpy" in sys.modules


where = runtime.remote(_where)


@runtime.remote
def where_after(seconds: float) -> tuple[int, int | None, bool]:
    time.sleep(seconds)
    return _where()


@runtime.remote
class Probe:
    def where(self) -> tuple[int, int | None]:
        module = sys.modules.get("tests.runtime._preloaded")
        return os.getpid(), getattr(module, "LOADED_BY", None)


@runtime.remote(max_retries=0)
def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _backend():  # type: ignore[no-untyped-def]
    from runtime import api

    return api._backend


def test_workers_and_actors_are_forked_with_the_preloaded_modules_imported_once():
    with runtime.init("local", num_cpus=2, preload=["tests.runtime._preloaded", "numpy"]):
        zygote = _backend().zygote
        assert zygote is not None and zygote.errors == []
        found = runtime.get([where.remote() for _ in range(6)])
        for worker, loaded_by, numpy_there in found:
            assert loaded_by == zygote.proc.pid != worker  # imported by the zygote, not again
            assert numpy_there
            assert psutil.Process(worker).ppid() == zygote.proc.pid
            assert psutil.Process(worker).name() == "runtime-worker"
        # an actor's process too, started mid-run: the two task workers stay for tasks
        probes = [Probe.remote() for _ in range(3)]
        for worker, loaded_by in runtime.get([p.where.remote() for p in probes]):
            assert loaded_by == zygote.proc.pid != worker
        assert all(isinstance(w.proc, ForkedProc) for w in _backend().workers.values())


def test_a_forked_worker_killed_is_told_as_killed_and_replaced():
    with runtime.init("local", num_cpus=2):
        with pytest.raises(runtime.WorkerCrashedError, match="killed by SIGKILL"):
            runtime.get(die.remote())
        assert len(runtime.get([where.remote() for _ in range(4)])) == 4


def test_without_its_zygote_the_backend_starts_workers_as_interpreters():
    with runtime.init("local", num_cpus=2, preload=["tests.runtime._preloaded"]):
        backend = _backend()
        zygote = backend.zygote
        before = {w.pid for w in backend.workers.values()}
        os.kill(zygote.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while zygote.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not zygote.alive
        # a forked worker dies: no one can say how, and the message says so
        with pytest.raises(runtime.WorkerCrashedError, match=UNKNOWN_EXIT):
            runtime.get(die.remote())
        # its replacement is a new interpreter, which imports only what its tasks need
        found = runtime.get([where_after.remote(0.3) for _ in range(4)])
        new = {worker for worker, _, _ in found} - before
        assert new
        for worker, loaded_by, _ in found:
            assert loaded_by in ((None, worker) if worker in new else (zygote.proc.pid,))
        assert not any(isinstance(w.proc, ForkedProc) for w in backend.workers.values()
                       if w.pid in new)


def test_a_preload_that_fails_to_import_fails_only_the_tasks_that_need_it():
    with runtime.init("local", num_cpus=2, preload=["no_such_module_here"]):
        zygote = _backend().zygote
        assert zygote is not None and zygote.alive
        assert zygote.errors and "no_such_module_here" in zygote.errors[0]
        assert len(runtime.get([where.remote() for _ in range(2)])) == 2


def test_a_preload_that_starts_threads_is_not_forked_from():
    with pytest.warns(RuntimeWarning, match="not forked from a zygote .*threads"):
        ctx = runtime.init("local", num_cpus=2, preload=["tests.runtime._starts_thread"])
    with ctx:
        assert _backend().zygote is None
        workers = {w for w, _, _ in runtime.get([where.remote() for _ in range(4)])}
        assert all(psutil.Process(w).name() == "runtime-worker" for w in workers)


def test_shutdown_stops_the_zygote_and_its_workers():
    ctx = runtime.init("local", num_cpus=2, preload=["tests.runtime._preloaded"])
    with ctx:
        zygote = _backend().zygote.proc.pid
        workers = {w for w, _, _ in runtime.get([where.remote() for _ in range(4)])}
        actor = Probe.remote()
        workers.add(runtime.get(actor.where.remote())[0])
    for pid in [zygote, *workers]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_compaction_pipeline_preloads_without_threads(recwarn: pytest.WarningsRecorder):
    """compactor's workers (PRELOAD: pyarrow, numpy, the pipeline) are forked: pyarrow's
    bundled jemalloc would start a thread on import but for the workers' settings."""
    from compactor.pipeline.tasks import PRELOAD

    with runtime.init("local", num_cpus=1, preload=PRELOAD):
        zygote = _backend().zygote
        assert zygote is not None and zygote.errors == []
        assert len(os.listdir(f"/proc/{zygote.proc.pid}/task")) == 1
        assert "compactor.pipeline.tasks" in psutil.Process(zygote.proc.pid).cmdline()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_zygote_that_stops_answering_is_replaced_and_its_late_fork_exits(
        monkeypatch: pytest.MonkeyPatch):
    """A spawn the zygote does not answer in SPAWN_SECONDS starts an interpreter on a fresh
    socket; the fork the zygote makes of it later finds its socket closed and exits."""
    from runtime.local import processes

    monkeypatch.setattr(processes, "SPAWN_SECONDS", 1.0)
    with runtime.init("local", num_cpus=2):
        backend = _backend()
        zygote = backend.zygote
        os.kill(zygote.proc.pid, signal.SIGSTOP)
        try:
            probes = [Probe.remote() for _ in range(3)]  # two take the idle workers; one waits
            assert len({w for w, _ in runtime.get([p.where.remote() for p in probes])}) == 3
            assert not zygote.alive
        finally:
            os.kill(zygote.proc.pid, signal.SIGCONT)
        # it forks the request it got; the fork exits (and the zygote says so)
        with zygote._changed:
            assert zygote._changed.wait_for(lambda: zygote._exited, timeout=10)
            [(late, code)] = zygote._exited.items()
        assert code == 0 and late not in {w.pid for w in backend.workers.values()}
        assert not psutil.pid_exists(late) or \
            psutil.Process(late).status() == psutil.STATUS_ZOMBIE
        assert len(runtime.get([where.remote() for _ in range(4)])) == 4


@pytest.mark.parametrize("signal_", [signal.SIGINT, signal.SIGKILL])
def test_a_driver_interrupted_or_killed_while_the_zygote_starts_leaves_nothing(
        tmp_path, signal_: signal.Signals):
    """Ctrl-C in init (the program goes on) or the driver's death while the zygote imports:
    no store directory and no process is left."""
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time, runtime
        print("starting", flush=True)
        try:
            runtime.init("local", num_cpus=1, preload=["tests.runtime._slow_import"],
                         store_parent={str(tmp_path)!r})
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            time.sleep(0.5)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               text=True, cwd=os.getcwd())
    assert process.stdout is not None and process.stdout.readline() == "starting\n"
    time.sleep(1.0)  # the zygote is importing
    children = psutil.Process(process.pid).children(recursive=True)
    assert children and os.listdir(tmp_path)
    process.send_signal(signal_)
    rest = process.communicate(timeout=30)[0]
    if signal_ == signal.SIGINT:
        assert rest == "interrupted\n" and process.returncode == 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
            os.listdir(tmp_path) or any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                                        for c in children)):
        time.sleep(0.1)
    assert os.listdir(tmp_path) == []
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


@runtime.remote
def _probe_value() -> str:
    import probe_shadowed  # type: ignore[import-not-found]

    return str(probe_shadowed.VALUE)


def test_workers_import_what_the_driver_imports_not_what_lies_in_its_working_directory(
        tmp_path, monkeypatch):
    # a module the driver finds on its own path, and another of the same name in the
    # directory it runs in (not on its path): workers import the driver's (started with
    # ``python -m`` alone, they put that directory first on their path)
    driver_dir, cwd = tmp_path / "on_path", tmp_path / "cwd"
    for where, value in ((driver_dir, "driver's"), (cwd, "working directory's")):
        where.mkdir()
        (where / "probe_shadowed.py").write_text(f"VALUE = {value!r}\n")
    monkeypatch.syspath_prepend(str(driver_dir))
    monkeypatch.chdir(cwd)
    try:
        import probe_shadowed  # type: ignore[import-not-found]

        assert probe_shadowed.VALUE == "driver's"
        with runtime.init("local", num_cpus=1):
            assert runtime.get(_probe_value.remote()) == "driver's"
    finally:
        sys.modules.pop("probe_shadowed", None)
