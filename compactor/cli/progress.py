"""Live progress of a compaction round, fed by ``compact_partition``'s ``progress`` callback.

On a terminal: one rich progress bar per pipeline step (tasks done / total, elapsed, rate).
Otherwise (a pipe, a log file, CI): plain timestamped lines, at most one per step per second
plus each step's start and end. Both go to stderr, so ``--json`` output stays parseable.

The callback reports the steps that run tasks (hash_bucket, dedupe, materialize, commit);
steps before them (starting the runtime, planning) are shown with :meth:`RoundProgress.begin`.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

_LOG_EVERY = 1.0  # seconds between lines of one step, when not on a terminal


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def _bytes_text(done: int, total: int, seconds: float) -> str:
    """``"120/800 MB, 45 MB/s"``, or "" for a step that reads no files."""
    if not total:
        return ""
    rate = f", {_mb(done / seconds)}/s" if seconds > 0 and done else ""
    return f"{_mb(done)} / {_mb(total)}{rate}"


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} tasks/s", style="progress.data.speed")


class _BytesColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.finished_time or task.elapsed or 0.0
        return Text(_bytes_text(task.fields.get("bytes_done", 0),
                                task.fields.get("bytes_total", 0), elapsed),
                    style="progress.download")


class RoundProgress:
    """A context manager that is also the ``progress(step, done, total, bytes_done,
    bytes_total)`` callback of ``compact_partition``."""

    def __init__(self, console: Console, *, live: bool | None = None) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self._start = time.perf_counter()
        self._step: str | None = None
        self._step_start = self._start
        self._last_line: dict[str, float] = {}
        self._bars = Progress(
            TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("tasks"), _BytesColumn(), TimeElapsedColumn(), _RateColumn(),
            console=console, disable=not self.live,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RoundProgress:
        self._start = time.perf_counter()
        if self.live:
            self._bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None and self._step is not None:
            self._finish(self._step)
        if self.live:
            self._bars.stop()

    def begin(self, step: str, what: str) -> None:
        """Show ``step``, whose progress is not counted in tasks, until the next step starts."""
        self._switch(step)
        if self.live:
            self._tasks[step] = self._bars.add_task(step, total=None)
        else:
            self._line(f"{step:<11} {what}")

    def __call__(self, step: str, done: int, total: int, bytes_done: int = 0,
                 bytes_total: int = 0) -> None:
        if total == 0 and (step in self._tasks or step in self._last_line):
            return  # a step re-reported with nothing left to do (retry bookkeeping)
        self._switch(step)
        if self.live:
            if step not in self._tasks:
                self._tasks[step] = self._bars.add_task(step, total=total)
            self._bars.update(self._tasks[step], completed=done, total=total,
                              bytes_done=bytes_done, bytes_total=bytes_total)
            if done >= total:
                self._bars.stop_task(self._tasks[step])
            return
        now = time.perf_counter()
        last = self._last_line.get(step)
        if last is None or done >= total or now - last >= _LOG_EVERY:
            self._last_line[step] = now
            read = _bytes_text(bytes_done, bytes_total, now - self._step_start)
            self._line(f"{step:<11} {done}/{total} tasks" + (f", {read}" if read else ""))

    def _switch(self, step: str) -> None:
        if step != self._step:
            if self._step is not None:
                self._finish(self._step)
            self._step, self._step_start = step, time.perf_counter()

    def _finish(self, step: str) -> None:
        if self.live:
            task = self._tasks[step]
            total = self._bars.tasks[task].total or 1
            self._bars.update(task, completed=total, total=total)
            self._bars.stop_task(task)
        elif step not in self._last_line:  # a step shown with begin(): say when it ended
            self._line(f"{step:<11} done in {time.perf_counter() - self._step_start:.1f} s")

    def _line(self, text: str) -> None:
        self.console.print(f"[{time.perf_counter() - self._start:6.1f}s] {text}",
                           markup=False, highlight=False)
