"""Progress bars for every long loop, through one small interface so library code never prints.

:class:`Progress` wraps ``rich.progress``; :class:`Progress.disabled` gives the same interface doing nothing (tests,
non-main processes).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Progress"]


class _Task:
    def __init__(self, bar: Any, task_id: Any) -> None:
        self._bar, self._id = bar, task_id

    def advance(self, n: float = 1, **fields: Any) -> None:
        if self._bar is not None:
            status = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            self._bar.update(self._id, advance=n, status=status)


class Progress:
    """A rich progress display, or a silent one when ``enabled`` is False."""

    def __init__(self, enabled: bool = True, console: Any = None) -> None:
        self._bar = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console, transient=True,
            )

    @classmethod
    def disabled(cls) -> "Progress":
        return cls(enabled=False)

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    @contextlib.contextmanager
    def task(self, description: str, total: float | None) -> Iterator[_Task]:
        """A bar for one loop; removed when the loop ends."""
        if self._bar is None:
            yield _Task(None, None)
            return
        task_id = self._bar.add_task(description, total=total, status="")
        try:
            yield _Task(self._bar, task_id)
        finally:
            self._bar.remove_task(task_id)

    def track(self, items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
        """Iterate ``items`` with a bar."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.task(description, total) as bar:
            for item in items:
                yield item
                bar.advance()

    def log(self, message: str) -> None:
        """A line above the bars (nothing when disabled)."""
        if self._bar is not None:
            self._bar.console.print(message)
