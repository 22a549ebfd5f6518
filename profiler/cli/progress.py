"""Rich progress with an ETA for long work, as a ``(done, total, label)`` callback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def rich_progress(description: str, enabled: bool = True) -> Iterator[Callable[[int, int, str], None]]:
    if not enabled:
        yield lambda done, total, label: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[label]}"))
    # on stderr: a redirected stdout keeps only the results, never the bars
    with Progress(*columns, transient=False, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=None, label="")

        def update(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, label=label)

        yield update
