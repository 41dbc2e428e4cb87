"""Progress for every long loop, through one small interface so library code never prints.

Three modes, chosen once for the process:

* a terminal (the console is a TTY): rich bars with the step count, images/s, the logged loss, the time elapsed and
  the ETA; when a task ends its bar is replaced by a one-line summary that stays on screen;
* anything else (a file, a pipe: a cluster job, ``nohup``, CI): a plain line every ``every`` seconds per task
  (``step k/total (p%), images/s, loss, ETA``) and the same one-line summary when it ends;
* disabled (``--quiet``, tests, every process but the main one under ``torchrun``): nothing.

Plain lines and summaries also go to ``record`` (``sslbench run`` passes one that appends to ``run.log``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Progress", "format_duration"]

#: Seconds between two plain progress lines of one task (``--progress-every``).
DEFAULT_EVERY = 30.0


def format_duration(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _Task:
    """One loop's counters; :meth:`advance` after each step (``images``: how many it processed)."""

    def __init__(self, owner: "Progress | None", description: str, total: float | None, completed: float = 0) -> None:
        self._owner = owner
        self.description, self.total = description, total
        self.completed = self._first = completed
        self.images = 0
        self.fields: dict[str, Any] = {}
        self.started = self._last_line = time.monotonic()
        self.rich_id: Any = None

    def advance(self, n: float = 1, *, images: int = 0, **fields: Any) -> None:
        if self._owner is None:
            return
        self.completed += n
        self.images += images
        self.fields.update(fields)
        self._owner._update(self)

    # -- what the lines say --------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Images per second since the task started (0 when it counts no images)."""
        elapsed = self.elapsed()
        return self.images / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        done = self.completed - self._first
        if not self.total or done <= 0:
            return None
        return (self.total - self.completed) * self.elapsed() / done

    def status(self) -> str:
        parts = [f"{self.rate():.1f} img/s"] if self.images else []
        parts += [f"{key} {_value(value)}" for key, value in self.fields.items()]
        return ", ".join(parts)

    def line(self) -> str:
        count = f"{self.completed:g}/{self.total:g}" if self.total else f"{self.completed:g}"
        percent = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        eta = self.eta()
        parts = [f"step {count}{percent}", self.status(), f"ETA {format_duration(eta)}" if eta is not None else ""]
        return f"{self.description}: " + ", ".join(p for p in parts if p)

    def summary(self, failed: bool) -> str:
        count = f"{self.completed:g}/{self.total:g}" if self.total else f"{self.completed:g}"
        status = self.status()
        verb = "stopped at step" if failed else "done,"
        return (f"{self.description}: {verb} {count} in {format_duration(self.elapsed())}"
                + (f", {status}" if status else ""))


class Progress:
    """Rich bars in a terminal, plain lines elsewhere, or nothing when ``enabled`` is False.

    Args:
        enabled: False: a silent progress (same interface).
        console: the rich console to write to (default: a new one on stderr); whether it is a terminal picks the
            mode.
        every: seconds between two plain lines of a task (off a terminal).
        record: also called with every plain line and summary (e.g. to append them to the run's log).
    """

    def __init__(self, enabled: bool = True, console: Any = None, *, every: float = DEFAULT_EVERY,
                 record: Callable[[str], None] | None = None) -> None:
        self._bar: Any = None
        self._console: Any = None
        self.every = every
        self._record = record
        if not enabled:
            return
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self._console = console
        if console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console,
                transient=True,
            )

    @classmethod
    def disabled(cls) -> "Progress":
        return cls(enabled=False)

    @property
    def enabled(self) -> bool:
        return self._console is not None

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    # -- tasks -----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def task(self, description: str, total: float | None, completed: float = 0) -> Iterator[_Task]:
        """A task for one loop (``completed``: steps already done, e.g. by a run this one resumes); when it ends, a
        one-line summary stays."""
        if not self.enabled:
            yield _Task(None, description, total, completed)
            return
        task = _Task(self, description, total, completed)
        if self._bar is not None:
            task.rich_id = self._bar.add_task(description, total=total, completed=completed, status="")
        failed = False
        try:
            yield task
        except GeneratorExit:  # a tracked loop left early on purpose
            raise
        except BaseException:
            failed = True
            raise
        finally:
            if self._bar is not None:
                self._bar.remove_task(task.rich_id)
            self._say(task.summary(failed))

    def _update(self, task: _Task) -> None:
        if self._bar is not None:
            self._bar.update(task.rich_id, completed=task.completed, status=task.status())
            return
        now = time.monotonic()
        if now - task._last_line >= self.every:
            task._last_line = now
            self._say(task.line())

    def _say(self, line: str) -> None:
        self._console.print(line, highlight=False, markup=False, soft_wrap=True)
        if self._record is not None:
            self._record(line)

    def refresh(self) -> None:
        """Redraw the bars now (they redraw themselves a few times a second)."""
        if self._bar is not None:
            self._bar.refresh()

    def track(self, items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
        """Iterate ``items`` with a task."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.task(description, total) as bar:
            for item in items:
                yield item
                bar.advance()

    def log(self, message: str) -> None:
        """A line above the bars (nothing when disabled)."""
        if self._console is not None:
            self._console.print(message)
