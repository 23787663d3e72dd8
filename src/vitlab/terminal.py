"""Where progress bars go: stderr (stdout is for results), and only where someone watches them live."""

from __future__ import annotations

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


def counting_bar(label: str, total: int) -> Progress:
    """A transient bar counting `total` items ('decoding images 1200/5000'), drawn only from COUNTING_BAR_FROM
    items and where it is watched live; start it with `with`, add one task and advance that."""
    console = progress_console()
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=console,
        disable=total < COUNTING_BAR_FROM or not draws_live(console),
    )
