"""Process faults: SIGKILL a task worker, a dedupe actor or the driver at a random point of a round.

Each trial (seeded: ``--trials``, ``--fault-seed``) builds a random change stream, starts a round
and kills one process when the round reaches a randomly chosen step, after a random delay:

- a **task worker** (preferably one running a hash or materialize task): the runtime retries the
  task on a new worker;
- a **dedupe actor**: it restarts and reloads its index from storage; a merge is retried, a
  later call fails the round;
- the **driver**, i.e. the ``compactor compact`` process: its workers and actors notice and
  exit, removing the runtime's shared-memory store.

Every trial must end with the oracle's state, or with nothing published and a rerun that
converges (``tests.faults.trials.run_round``); and no process of the killed runtime, nor its
``/dev/shm`` store, may remain.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import runtime
from compactor import compaction, create_table, open_table
from compactor.compaction import compact_partition
from compactor.faults import ENV
from compactor.pipeline.tasks import _DedupeWithMemory
from tests.compactor.test_compaction import SCHEMA
from tests.faults.conftest import Figures, assert_gone
from tests.faults.trials import Stream, Verdict, run_round

STEPS = ("start", "hash_bucket", "dedupe", "materialize", "commit")
EXECUTABLE = Path(sys.executable).parent / "compactor"


def _stream(tmp_path: Path, rng: random.Random, figures: Figures) -> Stream:
    table = create_table(f"file://{tmp_path}/t{rng.randrange(10**9)}", SCHEMA,
                         primary_key=["id"], ordering_column="lsn",
                         bucket_count=rng.choice([2, 4, 8]))
    stream = Stream(table, figures)
    keys = rng.choice([500, 5_000, 50_000])
    if rng.random() < 0.5:  # an incremental round: the actors merge into a persisted index
        stream.random_deltas(rng, rng.randint(1, 3), 3_000, keys)
        compact_partition(table, stream.part, target_file_size=20_000)
    stream.random_deltas(rng, rng.randint(2, 4), 4_000, keys)
    return stream


class Killer:
    """Kills one runtime process of kind ``target`` (``worker`` or ``actor``) once the round
    reports ``step`` (or, for ``start``, once it starts), after ``delay`` seconds."""

    def __init__(self, target: str, step: str, delay: float, rng: random.Random) -> None:
        self.target, self.step, self.delay, self.rng = target, step, delay, rng
        self.reached = threading.Event()
        self.killed: tuple[int, str] | None = None  # (pid, the step the round was in)
        self.current = "start"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def progress(self, step: str, done: int, total: int, *_: int) -> None:
        self.current = step
        if step == self.step:
            self.reached.set()

    def __enter__(self) -> Killer:
        if self.step == "start":
            self.reached.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.reached.set()  # a round that never reached the step: kill now, between rounds
        self._thread.join()

    def _victim(self) -> int | None:
        backend = runtime.api.current_backend()
        deadline = time.monotonic() + 0.3
        while True:
            with backend.lock:  # type: ignore[attr-defined]
                workers = [w for w in backend.workers.values()  # type: ignore[attr-defined]
                           if w.proc.poll() is None]
            if self.target == "actor":
                found = [w.pid for w in workers if w.actor is not None]
            else:
                task_workers = [w for w in workers if w.actor is None]
                busy = [w.pid for w in task_workers if w.state == "busy"]
                found = busy or ([w.pid for w in task_workers]
                                 if time.monotonic() > deadline else [])
            if found:
                return self.rng.choice(found)
            if time.monotonic() > deadline + 1:
                return None
            time.sleep(0.002)

    def _run(self) -> None:
        self.reached.wait()
        time.sleep(self.delay)
        pid = self._victim()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.killed = (pid, self.current)


def _record(figures: Figures, kind: str, verdict: Verdict) -> None:
    figures.trials[f"kill {kind}"] += 1
    figures.outcomes[verdict.label] += 1


@pytest.mark.parametrize("target", ["worker", "actor"])
def test_killed_worker_or_actor_at_a_random_point(rt, tmp_path, trials, fault_seed, figures,
                                                  target):
    count = trials // 3
    findings = []
    for trial in range(count):
        seed = fault_seed * 1000 + trial + (0 if target == "worker" else 500)
        rng = random.Random(seed)
        stream = _stream(tmp_path, rng, figures)
        killer = Killer(target, rng.choice(STEPS), rng.uniform(0, 0.03), rng)
        with killer:
            verdict = run_round(stream, partial(compact_partition, stream.table, stream.part,
                                                target_file_size=20_000,
                                                progress=killer.progress))
        assert killer.killed is not None, f"seed {seed}: found no {target} to kill"
        assert_gone([killer.killed[0]], [])
        figures.injected[f"SIGKILL {target} ({killer.killed[1]})"] += 1
        _record(figures, target, verdict)
        if verdict.outcome == "committed_but_failed":
            findings.append(f"seed {seed}: {verdict.error}")
        # the runtime is still usable after the fault: the next round on it works
        stream.random_deltas(rng, 1, 500, 1000)
        run_round(stream, partial(compact_partition, stream.table, stream.part,
                                  target_file_size=20_000))
    if findings:  # see test_an_actor_killed_in_commit_does_not_fail_a_committed_round
        figures.outcomes["committed but reported failure"] += len(findings)
        pytest.fail(f"{len(findings)} round(s) committed but raised: {'; '.join(findings)}")


class _DiesInCommit(_DedupeWithMemory):
    """A dedupe actor whose process dies (once) while it adopts a committed round's index."""

    def commit(self, state: int) -> None:
        marker = os.environ["FAULTS_DIE_IN_COMMIT"]
        if not os.path.exists(marker):
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        super().commit(state)


def test_an_actor_killed_in_commit_does_not_fail_a_committed_round(tmp_path, monkeypatch,
                                                                    figures):
    """compact_partition commits, then tells the dedupe actors; an actor that dies in that call
    must not turn a committed round into a reported failure."""
    died = tmp_path / "died"
    died.touch()  # not while the stream is set up (it may compact once)
    monkeypatch.setenv("FAULTS_DIE_IN_COMMIT", str(died))
    monkeypatch.setattr(compaction, "Dedupe", runtime.remote(max_restarts=3)(_DiesInCommit))
    stream = _stream(tmp_path, random.Random(5), figures)
    died.unlink()
    with runtime.init("local", num_cpus=2):
        verdict = run_round(stream, partial(compact_partition, stream.table, stream.part,
                                            target_file_size=20_000))
        assert (tmp_path / "died").exists()
        figures.injected["SIGKILL actor (in its commit call)"] += 1
        assert verdict.outcome == "completed", verdict
        stream.random_deltas(random.Random(6), 1, 500, 1000)  # the restarted actor reloads
        assert run_round(stream, partial(compact_partition, stream.table, stream.part,
                                         target_file_size=20_000)).outcome == "completed"


def _cli_tree(process: psutil.Process) -> tuple[list[int], list[str]]:
    """The pids of a CLI process's runtime workers, and its shared-memory store directory."""
    pids, stores = [], set()
    for child in process.children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        pids.append(child.pid)
        for module in ("runtime.local.worker", "runtime.local.zygote"):  # (forked: its cmd)
            if module in cmd:
                stores.add(cmd[cmd.index(module) + 2])
    return pids, sorted(stores)


def _kill_cli_round(stream: Stream, rng: random.Random, tmp_path: Path) -> tuple[str, list[int],
                                                                             list[str]]:
    """Run ``compactor compact`` on the stream's table and SIGKILL it at a random point.

    Returns where it was killed, its runtime's processes and store directories."""
    env = dict(os.environ)
    step = rng.choice([*STEPS[1:], "injected commit"])
    if step == "injected commit":  # dies right before its commit, every file written
        env[ENV] = f"commit:kill:{tmp_path}/marker-{rng.randrange(10**9)}"
    process = subprocess.Popen([str(EXECUTABLE), "compact", stream.table.url,
                                "--target-file-size", "20KB", "--backend", "local"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=env)
    watched = psutil.Process(process.pid)
    pids: set[int] = set()
    stores: set[str] = set()
    where = "exited before the kill"
    assert process.stderr is not None
    for line in process.stderr:
        found, dirs = _cli_tree(watched) if process.poll() is None else ([], [])
        pids.update(found)
        stores.update(dirs)
        match = re.match(r"\[\s*[\d.]+s\] (\w+)", line)
        if match and match.group(1) == step:
            time.sleep(rng.uniform(0, 0.05))
            found, dirs = _cli_tree(watched) if process.poll() is None else ([], [])
            pids.update(found)
            stores.update(dirs)
            process.send_signal(signal.SIGKILL)
            where = step
            break
    process.stderr.read()
    code = process.wait(timeout=120)
    if step == "injected commit" and code == -signal.SIGKILL:
        where = step
    return where, sorted(pids), sorted(stores)


def _leftover_stores(stores: list[str], timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(s) for s in stores) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [s for s in stores if os.path.exists(s)]
    for store in left:  # do not let them pile up in /dev/shm
        shutil.rmtree(store, ignore_errors=True)
    return left


def test_killed_driver_at_a_random_point(tmp_path, trials, fault_seed, figures):
    count = trials - 2 * (trials // 3)
    leaks = []
    with runtime.init("local", num_cpus=2):  # for setup and reruns; the CLI runs its own
        for trial in range(count):
            seed = fault_seed * 1000 + 900 + trial
            rng = random.Random(seed)
            stream = _stream(tmp_path, rng, figures)
            holder: dict[str, object] = {}

            def round_(s: Stream = stream, r: random.Random = rng,
                       h: dict[str, object] = holder) -> None:
                h["where"], h["pids"], h["stores"] = _kill_cli_round(s, r, tmp_path)
                s.table = open_table(s.table.url)  # the rerun reads what the CLI left
                if h["where"] != "exited before the kill":
                    raise RuntimeError(f"the driver was killed ({h['where']})")

            verdict = run_round(stream, round_)
            if verdict.outcome == "committed_but_failed":  # killed after its commit landed
                verdict = Verdict("completed")
            elif verdict.outcome == "rolled_back":
                verdict = Verdict("rolled_back", verdict.error, "driver killed")
            assert holder["pids"], f"seed {seed}: the CLI started no workers"
            assert_gone(holder["pids"], [])  # type: ignore[arg-type]
            left = _leftover_stores(holder["stores"])  # type: ignore[arg-type]
            if left:
                leaks.append(f"seed {seed} ({holder['where']}): {left}")
            figures.injected[f"SIGKILL driver ({holder['where']})"] += 1
            _record(figures, "driver", verdict)
    if leaks:  # reported after all trials, so that one run shows how often it happens
        figures.outcomes["store directory left behind"] += len(leaks)
        pytest.fail(f"{len(leaks)} of {count} killed drivers left their shared-memory store "
                     f"behind: {'; '.join(leaks)}")


@runtime.remote(max_retries=3)
def _large_result() -> np.ndarray:
    return np.ones(200_000_000, dtype=np.uint8)  # stored in shared memory: takes a while


def test_a_worker_killed_while_storing_its_result_is_retried(rt, figures):
    """The retry of a task whose worker died while writing its result to the store must not
    trip over the dead attempt's half-written object file."""
    backend: Any = runtime.api.current_backend()
    for _ in range(3):
        ref = _large_result.remote()
        stored = backend.store.path(ref.id)
        deadline = time.monotonic() + 60
        while not os.path.exists(stored):  # the worker has begun to write the result
            assert time.monotonic() < deadline, "the result was never stored"
            time.sleep(0.0002)
        with backend.lock:
            busy = [w.pid for w in backend.workers.values() if w.state == "busy"]
        for pid in busy:
            os.kill(pid, signal.SIGKILL)
        figures.injected["SIGKILL worker (storing its result)"] += len(busy)
        assert runtime.get(ref, timeout=120).shape == (200_000_000,)
        del ref
