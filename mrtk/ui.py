"""What a person sees while a run runs: rich progress bars per stage and a summary table
per iteration on a terminal; plain progress lines when stderr is a log file (`nohup`, CI,
`mrtk run > log 2>&1`), where bars would draw nothing until a stage ends. `QuietUI` keeps
tests and `--quiet` runs silent."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

LOG_EVERY_S = 30.0  # in a log: a line at least every 10% of a stage, or after this many seconds


class QuietUI:
    def info(self, text: str) -> None:
        pass

    @contextmanager
    def stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n: None

    def table(self, table: Table) -> None:
        pass

    @contextmanager
    def waiting(self, label: str) -> Iterator[None]:
        """A wait with no count to show (the embedded model's one-time conversion): a spinner that
        leaves nothing behind on a terminal, nothing in a log or a quiet run."""
        yield


class RichUI(QuietUI):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)

    def info(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)  # one line each, also in a log file

    @contextmanager
    def stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        if not self.console.is_terminal:
            with self._log_stage(label, total) as go:
                yield go
            return
        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task(label, total=total)
            yield lambda n: progress.advance(task, n)

    @contextmanager
    def _log_stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """One line at the start and the end, and between them a line per 10% done, or after
        30 s without one (a heartbeat: a batch can take minutes before its first row is done)."""
        t0 = time.monotonic()
        state = {"done": 0, "shown": 0, "at": t0}
        lock = threading.Lock()
        self._line(f"{label}: start, {total} to do")

        def show(now: float) -> None:
            state["shown"], state["at"] = state["done"], now
            self._line(f"{label}: {state['done']}/{total}, {_rate(state['done'], now - t0)}, {now - t0:.0f}s elapsed")

        def go(n: int) -> None:
            with lock:
                state["done"] += n
                now = time.monotonic()
                if state["done"] < total and state["done"] - state["shown"] >= max(1, total / 10):
                    show(now)

        def heartbeat() -> None:
            with lock:
                now = time.monotonic()
                if now - state["at"] >= LOG_EVERY_S:
                    show(now)

        with every(1.0, heartbeat):
            yield go
        elapsed = time.monotonic() - t0
        self._line(f"{label}: done {state['done']}/{total} in {elapsed:.0f}s ({_rate(state['done'], elapsed)})")

    @contextmanager
    def waiting(self, label: str) -> Iterator[None]:
        if not self.console.is_terminal:
            yield
            return
        with self.console.status(label):  # transient: an error after it is still the only line
            yield

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def table(self, table: Table) -> None:
        self.console.print(table)


def _rate(done: int, seconds: float) -> str:
    return f"{done / seconds:.2f}/s" if seconds > 0 else "-"


@contextmanager
def every(seconds: float, fn: Callable[[], None]) -> Iterator[None]:
    """Call `fn` from a background thread every `seconds` while the block runs (and once more at its end)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            fn()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        fn()
