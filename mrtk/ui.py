"""What a person sees while a run runs: rich progress bars per stage and a summary table
per iteration. `QuietUI` keeps tests and `--quiet` runs silent."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class QuietUI:
    def info(self, text: str) -> None:
        pass

    @contextmanager
    def stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n: None

    def table(self, table: Table) -> None:
        pass


class RichUI(QuietUI):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)

    def info(self, text: str) -> None:
        self.console.print(text)

    @contextmanager
    def stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=False) as progress:
            task = progress.add_task(label, total=total)
            yield lambda n: progress.advance(task, n)

    def table(self, table: Table) -> None:
        self.console.print(table)
