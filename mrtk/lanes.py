"""How a stage's model calls are made and their rows kept: backend-sized chunks one after another
(in-process backends), or calls in flight from threads ("lanes") that fill a served backend's
window while this thread writes the finished rows in batches. Every row a call returns is written
before the stage ends, and an error stops the lanes taking more without losing what finished."""

from __future__ import annotations

import queue
import threading
import time

from mrtk.store import RunStore

MAX_LANES = 512  # concurrent calls at most; past it a call holds several items (one batch request)
# A streamed stage writes its finished rows this often at least: each write opens the database
# (about 25 ms, so readers can open it between writes), so rows go in batches of up to FLUSH_ROWS
# (at most a second of a fast stage's rows in memory; `mrtk bench --only serving` shows the cost).
FLUSH_ROWS, FLUSH_S = 2048, 1.0


def run_chunks(
    store: RunStore, ui, label: str, todo: list, per_item: int, fn, table: str, max_rows: int, backend=None, group=None
) -> None:
    """Call a stage on `todo`, persisting rows as they finish; the progress bar counts the model
    calls still to make (after a resume, only the missing).

    `backend` opens the backend `fn` generates with (called only when there is work): its
    `window()` is what it takes in flight (samples). 0 (in-process backends; no `backend`):
    backend-sized chunks one after another, each written when done. Above 0 (served
    backends): one item per call (with `group`, a run of consecutive items with the same key:
    e.g. the battles of one response, which share its prefix), enough calls in flight to fill the
    window, so every server stays full and no call waits for an unrelated one; finished rows are
    written in small batches (FLUSH_ROWS or FLUSH_S), so memory stays flat and a crash loses at
    most the calls in flight."""
    if not todo:
        return
    window = backend().window() if backend else 0
    with ui.stage(label, len(todo) * per_item) as go:
        if window <= 0:
            size = max(1, max_rows // per_item)
            for i in range(0, len(todo), size):
                store.write(table, fn(todo[i : i + size], go))
            return
        _stream(store, group_calls(todo, group), per_item, fn, table, window, go)


def group_calls(todo: list, group) -> list[list]:
    """`todo` as calls: one item each, or (with `group`) runs of consecutive items with one key."""
    if group is None:
        return [[item] for item in todo]
    calls: list[list] = []
    for item, key in zip(todo, map(group, todo)):
        if calls and group(calls[-1][0]) == key:
            calls[-1].append(item)
        else:
            calls.append([item])
    return calls


def _stream(store: RunStore, chunks: list[list], per_item: int, fn, table: str, window: int, go) -> None:
    """`lanes` threads each take the next call and run it; this thread writes what they return.
    A failed call stops the lanes taking more; what the others finish is still written, then the
    first error is raised."""
    per_call = per_item * sum(map(len, chunks)) / len(chunks)
    lanes = max(1, int(window // per_call))
    if lanes > MAX_LANES:  # past MAX_LANES calls, a call takes several (one batch request)
        size = -(-lanes // MAX_LANES)
        chunks = [sum(chunks[i : i + size], []) for i in range(0, len(chunks), size)]
        lanes = MAX_LANES
    lanes = min(lanes, len(chunks))
    calls, take, stop, done = iter(chunks), threading.Lock(), threading.Event(), queue.SimpleQueue()
    quiet = lambda n: None  # noqa: E731  progress is counted here, in this thread, as calls finish

    def lane() -> None:
        try:
            while not stop.is_set():
                with take:
                    chunk = next(calls, None)
                if chunk is None:
                    break
                done.put((len(chunk), fn(chunk, quiet)))
        except BaseException as e:  # noqa: BLE001  handed to the writing thread, which raises it
            stop.set()
            done.put((0, e))
        finally:
            done.put(None)

    for _ in range(lanes):
        threading.Thread(target=lane, name="mrtk-lane", daemon=True).start()
    buffer: list = []
    last, alive, error = time.monotonic(), lanes, None
    try:
        while alive:
            try:
                got = done.get(timeout=FLUSH_S)
            except queue.Empty:
                got = ()
            if got is None:
                alive -= 1
            elif got and isinstance(got[1], BaseException):
                error = error or got[1]
            elif got:
                buffer += got[1]
                go(got[0] * per_item)
            if buffer and (len(buffer) >= FLUSH_ROWS or time.monotonic() - last >= FLUSH_S or not alive):
                store.write(table, buffer)
                buffer, last = [], time.monotonic()
    finally:
        stop.set()  # interrupted here (Ctrl-C): the lanes take nothing more; what finished is kept
        if buffer:
            store.write(table, buffer)
    if error is not None:
        raise error
