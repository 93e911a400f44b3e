"""Progress of long work: a rich bar on the terminal, or a callback (the notebook widgets use one)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

# (stage, done, total): called after each tensor of a stage such as "codebooks" or "low rank"
ProgressCallback = Callable[[str, int, int], None]
Progress = bool | ProgressCallback


class _CallbackBar:
    """The two calls of rich.progress.Progress that the encoders make, reported to a callback."""

    def __init__(self, callback: ProgressCallback) -> None:
        self._callback = callback
        self._tasks: list[list[Any]] = []  # [stage, done, total]

    def __enter__(self) -> _CallbackBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int) -> int:
        self._tasks.append([description, 0, total])
        self._callback(description, 0, total)
        return len(self._tasks) - 1

    def advance(self, task: int) -> None:
        entry = self._tasks[task]
        entry[1] += 1
        self._callback(*entry)


def progress_bar(progress: Progress) -> AbstractContextManager[Any]:
    """A context whose value has add_task(description, total) and advance(task), or None."""
    if callable(progress):
        return _CallbackBar(progress)
    if not progress:
        return nullcontext()
    from rich.console import Console
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tensors"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
