"""Console output: progress bars go to stderr (stdout is for results), and only where someone watches them live."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

COUNTING_BAR_FROM = 2000  # fewer images take a few seconds at most: no bar


def progress_console() -> Console:
    """The console progress bars draw on: stderr."""
    return Console(stderr=True)


def draws_live(console: Console) -> bool:
    """Whether a bar on this console is seen as it moves: a terminal or a notebook. On a pipe or a log
    file rich would still print the bar once as it stops, cut at 80 columns, or an empty line for a
    transient one."""
    return console.is_terminal or console.is_jupyter


@contextlib.contextmanager
def counting_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient bar counting `total` items ('decoding images 1200/5000'), drawn only from COUNTING_BAR_FROM
    items and where it is watched live; `with counting_bar(...) as advance:` then `advance(n)` per n done."""
    console = progress_console()
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=console,
        disable=total < COUNTING_BAR_FROM or not draws_live(console),
    )
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda done=1: progress.advance(task, done)


def counted(count: int, noun: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{count} {noun}{'s' * (count != 1)}"
