"""Stages that stream into each other: one iteration's actor, judge and meta-judge calls share the
servers' window, so a prompt's K samples are judged as soon as they return, and the battles of its
picked response start as soon as its judgements are in. No stage waits for the slowest answer of
the one before it, and no stage ends with its longest answers running alone on idle servers.

Rows, ids and seeds are the staged path's (the same stage functions make them, on the same items);
what is missing is read from the database first, so a resume goes on where the rows stop and
ends with the uninterrupted run's rows. The pick needs only the prompt's own rows
(`meta_judge.pick_responses` on one prompt), so it is the same whether the other prompts are done.
The `stages` rows say when each stage really ran: started at its first call, done once its last
row is written; they overlap. Served backends only (a window above 0): an in-process backend
decodes one batch at a time and has no window to share, so the loop runs its stages one by one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from mrtk.lanes import FLUSH_ROWS, FLUSH_S, MAX_LANES, group_calls
from mrtk.stages import actor, meta_judge
from mrtk.store import RunStore


@dataclass
class Flow:
    """One stage of a stream: `fn(items, go)` makes its rows (the stage function on the backend),
    written to `table`; `follow(items, rows)`, called on the writing thread as each call finishes,
    gives the next flow's items. `prompt(item)` is the prompt an item belongs to (progress counts
    prompts through every flow); `group` keeps consecutive items with one key in one call."""

    stage: str
    table: str
    per_item: int  # samples one item asks of the servers
    fn: Callable[[list, Callable], list[dict]]
    prompt: Callable[[Any], str]
    follow: Callable[[list, list[dict]], list] = lambda items, rows: []
    group: Callable | None = None


def run_flows(store: RunStore, ui, it: int, label: str, flows: list[Flow], start: list[list], window: int) -> None:
    """Run `flows` (upstream first) from the items in `start` (one list per flow: what is missing),
    with at most `window` samples in flight over all of them. Upstream calls go first, the work with
    the longest chain still behind it (a prompt's samples, then its judgements, then its battles):
    downstream work fills what upstream leaves free, and what runs last is the shortest, so the
    servers drain once, over the last battles (serving bench, 4 servers, one run each: 84-86% of
    capacity this way, 79-82% downstream first; 87-88% once the writer stopped waiting for idle
    lanes). Rows are written in batches (FLUSH_ROWS or FLUSH_S), upstream tables first, so a
    judgement is never on disk before its response. A failed
    call stops new calls; what the others finish is written, the begun stages end `error`, and the
    first error is raised (Ctrl-C: `interrupted`)."""
    _Stream(store, it, flows, window).run(ui, label, start)


class _Stream:
    """run_flows' state: the lanes take calls from `queued` under `cond`; this thread (the writer)
    adds calls, writes rows and ends stages."""

    def __init__(self, store: RunStore, it: int, flows: list[Flow], window: int):
        self.store, self.it, self.flows, self.window = store, it, flows, max(1, window)
        self.queued: list[deque] = [deque() for _ in flows]
        self.pending = [0] * len(flows)  # calls queued or running, per flow
        self.left: Counter = Counter()  # prompt -> its calls queued or running
        self.buffers: list[list] = [[] for _ in flows]
        self.began: dict[int, float] = {}
        self.ended: set[int] = {i for i, f in enumerate(flows) if store.stage_done(it, f.stage)}
        self.recorded = set(self.ended)  # stages already done before this stream: their rows stay
        self.cond, self.inflight, self.closing = threading.Condition(), 0, False
        self.stop, self.done = threading.Event(), queue.SimpleQueue()
        self.min_samples = max(1, -(-self.window // MAX_LANES))  # past MAX_LANES calls, a call takes several items

    # -- the writer ------------------------------------------------------------------------------
    def run(self, ui, label: str, start: list[list]) -> None:
        for i, items in enumerate(start):
            self.add(i, items)
        lanes = min(MAX_LANES, max(1, self.window // min(f.per_item for f in self.flows)))
        with ui.stage(label, len(self.left)) as go:
            for _ in range(lanes):
                threading.Thread(target=self.lane, name="mrtk-stream", daemon=True).start()
            alive, error, last = lanes, None, time.monotonic()
            try:
                self.close_stages()
                while alive and not self.closing:  # closing: every stage ended, its rows written; the lanes go alone
                    try:
                        got = self.done.get(timeout=FLUSH_S)
                    except queue.Empty:
                        got = ()
                        with self.cond:
                            self.cond.notify_all()  # a safety net: no lane sleeps on work that fits
                    if got is None:
                        alive -= 1
                    elif got and isinstance(got[2], BaseException):
                        self.pending[got[0]] -= 1
                        error = error or got[2]
                    elif got:
                        self.finished(*got, go)
                        self.close_stages()
                    if sum(map(len, self.buffers)) >= FLUSH_ROWS or time.monotonic() - last >= FLUSH_S:
                        self.flush()
                        last = time.monotonic()
            except BaseException as e:
                error = error or e
                raise
            finally:
                self.halt()
                self.flush()
                for i in set(self.began) - self.ended:  # begun and not ended: the error (or Ctrl-C) ends them
                    self.store.end_stage(self.it, self.flows[i].stage, time.time() - self.began[i], error)
            if error is not None:
                raise error

    def add(self, i: int, items: list) -> None:
        """Queue `items` as flow i's calls (a prompt's K samples, a response's N judgements, its battles)."""
        if not items:
            return
        f = self.flows[i]
        calls, merged = group_calls(items, f.group), []
        for c in calls:
            if merged and f.per_item * len(merged[-1]) < self.min_samples:
                merged[-1] += c
            else:
                merged.append(list(c))
        if i not in self.began and i not in self.recorded:
            self.store.begin_stage(self.it, f.stage)
            self.began[i] = time.time()
        for c in merged:
            self.left.update({f.prompt(x) for x in c})
        self.pending[i] += len(merged)
        with self.cond:
            self.queued[i].extend(merged)
            self.cond.notify(len(merged))

    def finished(self, i: int, items: list, rows: list[dict], go) -> None:
        """A call's rows: buffered for writing, followed (the next flow's items), the prompt counted
        once nothing of it is queued or running."""
        self.pending[i] -= 1
        self.buffers[i] += rows
        if i + 1 < len(self.flows) and not self.stop.is_set():
            self.add(i + 1, self.flows[i].follow(items, rows))
        for p in {self.flows[i].prompt(x) for x in items}:
            self.left[p] -= 1
            if not self.left[p]:
                del self.left[p]
                go(1)

    def close_stages(self) -> None:
        """End each stage that has nothing queued or running and can get nothing more (every stage
        upstream of it ended), its rows written first; once all have ended, the lanes go. Not after a
        failed call (`stop`): its items never finish, so no stage it touched is done."""
        if self.stop.is_set():
            return
        for i in range(len(self.flows)):
            if i not in self.ended and self.pending[i] == 0 and all(j in self.ended for j in range(i)):
                self.ended.add(i)
                if i in self.began:
                    self.flush()
                    self.store.end_stage(self.it, self.flows[i].stage, time.time() - self.began[i])
        if len(self.ended) == len(self.flows) and not any(self.pending):
            with self.cond:
                self.closing = True
                self.cond.notify_all()

    def flush(self) -> None:
        for f, rows in zip(self.flows, self.buffers):
            if rows:
                self.store.write(f.table, rows)
                rows.clear()

    def halt(self) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()

    # -- the lanes ---------------------------------------------------------------------------------
    def take(self) -> tuple[int, list, int] | None:
        """The most upstream queued call, if it fits in the window (or nothing is in flight); nothing
        downstream jumps an upstream call that waits for room. Under `cond`."""
        for i in range(len(self.flows)):
            if self.queued[i]:
                cost = self.flows[i].per_item * len(self.queued[i][0])
                if self.inflight and self.inflight + cost > self.window:
                    return None
                self.inflight += cost
                return i, self.queued[i].popleft(), cost
        return None

    def lane(self) -> None:
        quiet = lambda n: None  # noqa: E731  progress is counted by the writer, in prompts
        try:
            while True:
                with self.cond:
                    while not (self.stop.is_set() or self.closing) and (got := self.take()) is None:
                        self.cond.wait()
                    if self.stop.is_set() or self.closing:
                        return
                i, items, cost = got
                try:
                    self.done.put((i, items, self.flows[i].fn(items, quiet)))
                except BaseException as e:  # noqa: BLE001  handed to the writer, which raises it
                    self.stop.set()
                    self.done.put((i, items, e))
                    return
                finally:
                    with self.cond:
                        self.inflight -= cost
                        self.cond.notify()
        finally:
            self.done.put(None)


@dataclass
class IterationStream:
    """The follow rules of one iteration's actor -> judge -> meta-judge: a prompt's response rows
    give its distinct responses' judge units (those not judged yet); once every unit of the prompt
    is judged, its pick (`pick(responses, judgements)`: the prompt's rows alone) gives the battles
    not yet fought. `job` is the loop's stages.judge.Judging; `meta` False: no meta-judge flow."""

    job: Any
    pick: Callable[[list[dict], list[dict]], str | None]
    meta: bool
    judged: set[str] = field(default_factory=set)  # judgement ids already stored
    fought: set[tuple[str, str]] = field(default_factory=set)  # battles already stored
    responses: dict[str, list[dict]] = field(default_factory=dict)  # prompt -> its response rows
    judgements: dict[str, list[dict]] = field(default_factory=dict)  # prompt -> its judgement rows
    texts: dict[str, str] = field(default_factory=dict)  # response id -> text (the meta-judge shows it)
    units_left: Counter = field(default_factory=Counter)  # prompt -> judge units not yet judged

    def start(self, prompts: list[dict], responses: list[dict], judgements: list[dict]) -> list[list]:
        """What is missing, from the stored rows: [prompts to answer, units to judge, battles to fight]."""
        for j in judgements:
            self.judgements.setdefault(j["prompt_id"], []).append(j)
        by_prompt: dict[str, list[dict]] = {}
        for r in responses:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
        units, battles = [], []
        for pid in sorted(by_prompt):
            todo = self.answered(by_prompt[pid])
            units += todo
            battles += [] if todo else self.battles(pid)
        return [[p for p in prompts if p["prompt_id"] not in by_prompt], units, battles]

    def answered(self, rows: list[dict]) -> list:
        """A prompt's response rows are in: its units still to judge."""
        pid = rows[0]["prompt_id"]
        self.responses[pid] = rows
        self.texts.update((r["response_id"], r["text"]) for r in rows)
        todo = self.job.missing(rows, self.judged)
        self.units_left[pid] = len(todo)
        return todo

    def battles(self, pid: str) -> list:
        """The prompt's battles not yet fought (once, when its last unit is judged); its rows are let go,
        and the texts of all but its pick (the meta-judge shows that one)."""
        responses, judgements = self.responses.pop(pid), self.judgements.pop(pid, [])
        rid = self.pick(responses, judgements) if self.meta else None
        for r in responses:
            if r["response_id"] != rid:
                self.texts.pop(r["response_id"], None)
        if rid is None:
            return []
        fights = meta_judge.battles([j for j in judgements if j["response_id"] == rid])
        return [f for f in fights if (f[0]["judgement_id"], f[1]["judgement_id"]) not in self.fought]

    def after_actor(self, items: list[dict], rows: list[dict]) -> list:
        """Follow of the actor flow: each prompt's units to judge."""
        by_prompt: dict[str, list[dict]] = {}
        for r in rows:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
        return [u for pid in by_prompt for u in self.answered(by_prompt[pid])]  # new rows: none judged yet

    def after_judge(self, units: list[dict], rows: list[dict]) -> list:
        """Follow of the judge flow: a prompt whose last unit is judged gives its battles."""
        for j in rows:
            self.judgements.setdefault(j["prompt_id"], []).append(j)
        out: list = []
        for u in units:
            pid = u["prompt_id"]
            self.units_left[pid] -= 1
            if not self.units_left[pid]:
                out += self.battles(pid)
        return out


def stream_iteration(
    store: RunStore, ui, cfg, templates, job, it: int, prompts: list[dict], use, *, meta: bool, version=None, tag=""
) -> None:
    """Iteration `it`'s actor, judge (`job`, a scoring stages.judge.Judging) and, with `meta`, meta-judge
    rows for `prompts`, made as one stream on the backend `use()` opens (model `version`, default M<it>),
    from what the store lacks. `cfg` is the run's config, `templates` its actor and meta-judge templates.
    Writes rows and stage rows (named actor, judge, meta_judge, each + `tag`); the Elo and everything
    after it stay with the loop's steps."""
    kw = {"iteration": it, "run_seed": cfg.seed, "model_version": version or f"M{it}"}
    questions = {p["prompt_id"]: p["text"] for p in prompts}

    def pick(responses: list[dict], judgements: list[dict]) -> str | None:
        picks = meta_judge.pick_responses(
            responses, judgements, run_seed=cfg.seed, iteration=it, require_variance=cfg.meta_judge.require_variance
        )
        return picks[responses[0]["prompt_id"]][0]

    st = IterationStream(
        job,
        pick,
        meta,
        judged=store.judged_ids(job.table, it, job.key),
        fought=store.meta_judged(it, templates.meta_judge.hash),
    )
    flows = [
        Flow(
            "actor" + tag,
            "responses",
            cfg.actor.k,
            lambda items, go: actor.run_actor(use(), items, cfg.actor, templates.actor, on_progress=go, **kw),
            lambda p: p["prompt_id"],
            st.after_actor,
        ),
        Flow(
            "judge" + tag,
            job.table,
            job.n,
            lambda units, go: job.run(use(), units, questions, on_progress=go, **kw),
            lambda u: u["prompt_id"],
            st.after_judge,
        ),
        Flow(
            "meta_judge" + tag,
            "meta_judgements",
            1,
            lambda fights, go: meta_judge.run_meta_judge(
                use(), fights, questions, st.texts, cfg.meta_judge, templates.meta_judge, on_progress=go, **kw
            ),
            lambda f: f[0]["prompt_id"],
            group=meta_judge.battle_group,
        ),
    ][: 3 if meta else 2]
    ids = {p["prompt_id"] for p in prompts}
    start = st.start(prompts, store.responses(it, ids), store.loop_judgements(it, job.key, ids))
    label = f"it{it}{tag} actor, judge" + (", meta-judge" if meta else "") + " (prompts)"
    run_flows(store, ui, it, label, flows, start[: len(flows)], use().window())
