"""Where progress bars go: stderr (stdout is for results), and only where someone watches them live."""

from __future__ import annotations

from rich.console import Console


def progress_console() -> Console:
    """The console progress bars draw on: stderr."""
    return Console(stderr=True)


def draws_live(console: Console) -> bool:
    """Whether a bar on this console is seen as it moves: a terminal or a notebook. On a pipe or a log
    file rich would still print the bar once as it stops, cut at 80 columns, or an empty line for a
    transient one."""
    return console.is_terminal or console.is_jupyter
