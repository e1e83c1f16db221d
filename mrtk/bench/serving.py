"""`mrtk bench --only serving`: how full the SGLang path keeps its servers, against simulated
servers (`mrtk.bench.serving_sim`: continuous batching, a fixed time per decode step, seeded
long-tailed answer lengths, a radix cache), each in its own process as a real server is.

For each generating stage of an iteration (actor: K samples per prompt; judge: the structured
program, N justifications then the score read per response; meta-judge: the structured verdict
per battle of the picked responses' judgements), run the loop's own path (`lanes.run_chunks` ->
the stage function -> `SGLangBackend` -> HTTP, rows written to a real run database) against:
1 server, 4 servers, and a router in front of 4 workers. Reported per stage: decoded tokens
per second as a share of the capacity of the servers used (`slots / step_s` each), and the
speed-up of 4 servers and of the router over 1 server. One run gives ratios on one machine;
wall times are only their inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mrtk.bench.serving_sim import LatencyModel


@dataclass(frozen=True)
class Sizes:
    prompts: int = 384  # actor prompts, K samples each
    k: int = 4
    n: int = 3  # judgements per response
    judged: int = 512  # responses judged (N each)
    meta_responses: int = 342  # responses whose judgements battle (N*(N-1) battles each)
    actor_tokens: int = 48  # max_new_tokens per stage (the simulated lengths: 5% reach it)
    judge_tokens: int = 48
    meta_tokens: int = 32


QUICK = Sizes(prompts=64, judged=86, meta_responses=43)
# A stage must be many times its longest answer on each of 4 servers (as a paper-scale stage is):
# about 400 samples per slot. Few slots keep that to seconds; 8 ms steps leave the client (its
# tokenizer: ~1 ms per 600-token prompt) and 4 simulated servers enough of 2 CPU cores (at 5 ms a
# busy machine measured 3.3-3.4x where a quiet one measured 3.7-4.0x).
MODEL = LatencyModel(slots=4, step_s=0.008)


def launch(args: list[str]) -> tuple[subprocess.Popen, str]:
    """A `python -m mrtk.bench.serving_sim` process and the URL it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "mrtk.bench.serving_sim", *args], stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"the serving simulator did not start ({url!r})")
    return proc, url


@contextmanager
def simulated(servers: int, router: bool = False, model: LatencyModel = MODEL, rl: bool = False):
    """`servers` simulated servers (and a router in front of them): (generation URLs, worker URLs)."""
    procs = []
    try:
        workers = []
        for _ in range(servers):
            p, u = launch(["--slots", str(model.slots), "--step-ms", str(model.step_s * 1000)])
            procs.append(p)
            workers.append(u)
        urls = workers
        if router:
            p, u = launch(["--router", *workers] + (["--rl"] if rl else []))
            procs.append(p)
            urls = [u]
        yield urls, workers
    finally:
        for p in procs:
            p.kill()
            p.wait()


def sim_stats(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url + "/sim_stats", timeout=30) as r:
        return json.loads(r.read())


LAYOUTS = (
    ("1 server", 1, False, False),
    ("4 servers", 4, False, False),
    ("router + 4", 4, True, False),
    ("4 servers, one call at a time", 4, False, True),
)  # the last: the client as it was (actor stage only)


# The client's own cost (issue 33): the same stages against one simulated server fast enough that
# the client rarely waits (many slots, 0.5 ms steps, short answers).
FAST = LatencyModel(slots=1024, step_s=0.0005)
CLIENT_SIZES = Sizes(
    prompts=512, k=4, n=2, judged=2048, meta_responses=256, actor_tokens=16, judge_tokens=16, meta_tokens=8
)
CLIENT_QUICK = Sizes(
    prompts=32, k=4, n=2, judged=64, meta_responses=16, actor_tokens=16, judge_tokens=16, meta_tokens=8
)
CLIENT_PARTS = ("tokenize", "http_json", "duckdb")


class _Costs:
    """CPU seconds of the calling thread spent inside wrapped calls, summed by part over all threads
    (time.thread_time around each call: a lane blocked on its socket costs nothing)."""

    def __init__(self):
        self.seconds = dict.fromkeys(CLIENT_PARTS, 0.0)
        self.lock = threading.Lock()

    def wrap(self, part: str, fn):
        def timed(*args, **kw):
            t0 = time.thread_time()
            try:
                return fn(*args, **kw)
            finally:
                spent = time.thread_time() - t0
                with self.lock:
                    self.seconds[part] += spent

        return timed


def client_cost(quick: bool = False, sizes: Sizes | None = None) -> dict:
    """{stage: {samples, seconds, cpu_s, user_s, sys_s, ms_per_sample, samples_per_cpu_s, share_<part>}}:
    the client process's CPU (every thread, user + system) per sample against one fast simulated
    server, the samples per second one core of it sustains at that cost, and where the CPU went:
    tokenizing prompts (chat template and encode), HTTP with JSON (request to parsed payload),
    DuckDB writes, and the rest (the stages' per-row Python, the lanes, the server's model stats)."""
    costs = _Costs()
    report = run_serving_bench(
        sizes=sizes or (CLIENT_QUICK if quick else CLIENT_SIZES),
        layouts=(("fast server", 1, False, False),),
        model=FAST,
        costs=costs,
    )
    out = {}
    for label, by in report["stages"].items():
        v = by["fast server"]
        cpu = v["client_cpu_s"]  # process_time: every thread, user + system, at ns resolution (os.times: 10 ms ticks)
        out[label] = {
            "samples": v["samples"],
            "seconds": v["seconds"],
            "cpu_s": round(cpu, 3),
            "user_s": v["client_user_s"],
            "sys_s": v["client_sys_s"],
            "ms_per_sample": round(1000 * cpu / v["samples"], 3),
            "samples_per_cpu_s": round(v["samples"] / cpu, 1) if cpu else None,
            "samples_per_s": round(v["samples"] / v["seconds"], 1),
            **{f"share_{k}": round(x / cpu, 3) if cpu else None for k, x in v["parts"].items()},
        }
    return out


def run_serving_bench(
    quick: bool = False, sizes: Sizes | None = None, layouts=LAYOUTS, model: LatencyModel = MODEL, costs=None
) -> dict:
    """{stage: {layout: {tokens, seconds, tokens_per_s, of_capacity}, speedup_<layout>: x}}. A
    layout is (name, servers, a router in front, serial): serial runs the actor stage as the
    client did before requests were kept in flight, one call of up to 256 samples at a time.
    `costs` (a `_Costs`): tokenizing, HTTP and DuckDB writes are timed by part (client_cost)."""
    from mrtk.backends.sglang import SGLangBackend
    from mrtk.backends.sglang_client import SGLangClient
    from mrtk.config import load_config
    from mrtk.models import embedded_model_dir, tokenizer_for
    from mrtk.prompts import bind_meta_judge, load_template
    from mrtk.lanes import run_chunks
    from mrtk.stages import actor, judge, meta_judge
    from mrtk.store import RunStore
    from mrtk.ui import QuietUI

    sz = sizes or (QUICK if quick else Sizes())
    cfg = load_config(
        None,
        [
            f"actor.k={sz.k}",
            f"judge.n={sz.n}",
            f"actor.max_new_tokens={sz.actor_tokens}",
            f"judge.max_new_tokens={sz.judge_tokens}",
            f"meta_judge.max_new_tokens={sz.meta_tokens}",
        ],
    )
    tok = tokenizer_for(str(embedded_model_dir()))
    t_actor = load_template(cfg.actor.template, role="actor")
    t_judge = load_template(cfg.judge.template, role="judge")
    t_meta = bind_meta_judge(load_template(cfg.meta_judge.template, role="meta-judge"), t_judge)
    prompts = [
        {"prompt_id": f"p{i:05d}", "text": f"Question {i}: explain, with an example, how {w} works."}
        for i, w in enumerate(
            ["a lever", "a loan", "photosynthesis", "a hash map", "a vaccine", "tides"] * (sz.prompts // 6 + 1)
        )
    ][: sz.prompts]
    questions = {p["prompt_id"]: p["text"] for p in prompts}
    report: dict = {
        "model": {"slots": model.slots, "step_ms": model.step_s * 1000, "capacity_tokens_per_s": model.capacity},
        "sizes": sz.__dict__,
        "stages": {},
    }
    with tempfile.TemporaryDirectory() as d:
        for name, servers, router, serial in layouts:
            store = RunStore(Path(d) / name.replace(" ", "_").replace("+", ""))
            store.migrate()
            with simulated(servers, router, model) as (urls, workers):
                client = SGLangClient(urls, worker_urls=workers if router else None, retries=2, backoff_s=0.05)
                client.check_servers()
                backend = SGLangBackend(client, tok, weight_version="M1")
                if costs is not None:  # this bench's own objects, timed by part
                    backend.chat_ids = costs.wrap("tokenize", backend.chat_ids)
                    backend._ids = costs.wrap("tokenize", backend._ids)
                    client._send = costs.wrap("http_json", client._send)
                    store.write = costs.wrap("duckdb", store.write)

                def stage(label: str, todo: list, per_item: int, fn, table: str, group=None):
                    before = [sim_stats(w) for w in workers]
                    parts0 = dict(costs.seconds) if costs is not None else {}
                    t0, c0, os0 = time.monotonic(), time.process_time(), os.times()
                    run_chunks(
                        store,
                        QuietUI(),
                        label,
                        todo,
                        per_item,
                        fn,
                        table,
                        256,
                        None if serial else lambda: backend,
                        group,
                    )
                    seconds, client_cpu, os1 = time.monotonic() - t0, time.process_time() - c0, os.times()
                    after = [sim_stats(w) for w in workers]
                    tokens = sum(a["tokens"] - b["tokens"] for a, b in zip(after, before))
                    server_cpu = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before))
                    report["stages"].setdefault(label, {})[name] = {
                        "tokens": tokens,
                        "seconds": round(seconds, 3),
                        "tokens_per_s": round(tokens / seconds, 1),
                        "of_capacity": round(tokens / seconds / (model.capacity * servers), 3),
                        "samples": len(todo) * per_item,
                        "client_cpu_s": round(client_cpu, 4),
                        "client_user_s": round(os1.user - os0.user, 2),
                        "client_sys_s": round(os1.system - os0.system, 2),
                        "parts": {k: costs.seconds[k] - parts0[k] for k in parts0},
                        "server_cpu_s": round(server_cpu, 2),
                    }

                kw = {"iteration": 1, "run_seed": 1, "model_version": "M1"}
                stage(
                    "actor",
                    prompts,
                    sz.k,
                    lambda rows, go: actor.run_actor(backend, rows, cfg.actor, t_actor, on_progress=go, **kw),
                    "responses",
                )
                if serial:
                    continue
                responses = store.responses(1)
                job = judge.Judging(t_judge, cfg.judge)
                stage(
                    "judge",
                    job.units(responses)[: sz.judged],
                    sz.n,
                    lambda rows, go: job.run(backend, rows, questions, on_progress=go, **kw),
                    job.table,
                )
                judgements = store.loop_judgements(1, t_judge.hash)
                by_response: dict[str, list] = {}
                for j in judgements:
                    by_response.setdefault(j["response_id"], []).append(j)
                texts = {r["response_id"]: r["text"] for r in responses}
                fights = [
                    f for rid in sorted(by_response)[: sz.meta_responses] for f in meta_judge.battles(by_response[rid])
                ]
                stage(
                    "meta-judge",
                    fights,
                    1,
                    lambda rows, go: meta_judge.run_meta_judge(
                        backend, rows, questions, texts, cfg.meta_judge, t_meta, on_progress=go, **kw
                    ),
                    "meta_judgements",
                    meta_judge.battle_group,
                )
    base = layouts[0][0]
    for label, by_layout in report["stages"].items():
        for name, *_ in layouts[1:]:
            if name in by_layout and base in by_layout:
                by_layout[f"speedup {name}"] = round(
                    by_layout[name]["tokens_per_s"] / by_layout[base]["tokens_per_s"], 2
                )
        for name, servers, _, serial in layouts:  # requests in flight against the client as it was, on the same servers
            same = next((n for n, s, r, ser in layouts if s == servers and not r and not ser), None)
            if serial and name in by_layout and same in by_layout:
                by_layout[f"{same} over {name}"] = round(
                    by_layout[same]["tokens_per_s"] / by_layout[name]["tokens_per_s"], 2
                )
    return report


# The whole window of an iteration's generation (issue 33, item 1): actor, judge and meta-judge of
# 512 prompts x K=4, N=2 structured judgements, on servers of 64 slots, staged (one stage after
# another, as sglang.stream_stages: false runs them) and streamed (the loop's default). 40 ms steps:
# 4 such servers and the client share this machine's 2 cores without the stand-ins' own CPU deciding.
WINDOW_MODEL = LatencyModel(slots=64, step_s=0.04)
WINDOW_SIZES = Sizes(prompts=512, k=4, n=2, judged=0, meta_responses=0)
WINDOW_QUICK = Sizes(prompts=48, k=4, n=2, judged=0, meta_responses=0)
WINDOW_LAYOUTS = (1, 4)  # servers


def iteration_window(quick: bool = False, model: LatencyModel = WINDOW_MODEL, servers=WINDOW_LAYOUTS) -> dict:
    """{servers: {mode: {tokens, seconds, of_capacity, samples, stages}}, speed-ups}: one iteration's
    actor, judge and meta-judge against `servers` simulated servers, run the loop's two ways: staged
    (each stage over all prompts before the next) and streamed (`stream.stream_iteration`). The share
    is decoded tokens over the window, from the first request to the last row written, of the
    servers' capacity; `stages` gives each stage's share of the window it spans (they overlap when
    streamed)."""
    from types import SimpleNamespace

    from mrtk.backends.sglang import SGLangBackend
    from mrtk.backends.sglang_client import SGLangClient
    from mrtk.config import load_config
    from mrtk.lanes import run_chunks
    from mrtk.models import embedded_model_dir, tokenizer_for
    from mrtk.prompts import bind_meta_judge, load_template
    from mrtk.stages import actor, judge, meta_judge
    from mrtk.store import RunStore
    from mrtk.stream import stream_iteration
    from mrtk.ui import QuietUI

    sz = WINDOW_QUICK if quick else WINDOW_SIZES
    cfg = load_config(
        None,
        [
            f"actor.k={sz.k}",
            f"judge.n={sz.n}",
            "judge.score_mode=structured",
            f"actor.max_new_tokens={sz.actor_tokens}",
            f"judge.max_new_tokens={sz.judge_tokens}",
            f"meta_judge.max_new_tokens={sz.meta_tokens}",
        ],
    )
    tok = tokenizer_for(str(embedded_model_dir()))
    t_judge = load_template(cfg.judge.template, role="judge")
    t = SimpleNamespace(
        actor=load_template(cfg.actor.template, role="actor"),
        meta_judge=bind_meta_judge(load_template(cfg.meta_judge.template, role="meta-judge"), t_judge),
    )
    job = judge.Judging(t_judge, cfg.judge)
    prompts = [
        {"prompt_id": f"p{i:05d}", "text": f"Question {i}: {TOPICS[i % len(TOPICS)]}"} for i in range(sz.prompts)
    ]
    questions = {p["prompt_id"]: p["text"] for p in prompts}
    kw = {"iteration": 1, "run_seed": cfg.seed, "model_version": "M1"}

    def staged(store: RunStore, backend) -> None:
        """The loop's steps 1-3 one after another (Loop._step_actor, _step_judge, _step_meta_judge)."""

        def run(todo, per_item, fn, table, group=None):
            run_chunks(store, QuietUI(), table, todo, per_item, fn, table, 256, lambda: backend, group)

        for name, body in (
            (
                "actor",
                lambda: run(
                    prompts,
                    sz.k,
                    lambda r, go: actor.run_actor(backend, r, cfg.actor, t.actor, on_progress=go, **kw),
                    "responses",
                ),
            ),
            (
                "judge",
                lambda: run(
                    job.units(store.responses(1)),
                    sz.n,
                    lambda r, go: job.run(backend, r, questions, on_progress=go, **kw),
                    job.table,
                ),
            ),
            ("meta_judge", lambda: meta(store, backend, run)),
        ):
            with store.stage(1, name):
                body()

    def meta(store: RunStore, backend, run) -> None:
        responses, judgements = store.responses(1), store.loop_judgements(1, job.key)
        picks = meta_judge.pick_responses(responses, judgements, run_seed=cfg.seed, iteration=1)
        texts = {r["response_id"]: r["text"] for r in responses}
        fights = [
            f
            for rid, _ in picks.values()
            if rid
            for f in meta_judge.battles([j for j in judgements if j["response_id"] == rid])
        ]
        run(
            fights,
            1,
            lambda r, go: meta_judge.run_meta_judge(
                backend, r, questions, texts, cfg.meta_judge, t.meta_judge, on_progress=go, **kw
            ),
            "meta_judgements",
            meta_judge.battle_group,
        )

    report: dict = {
        "model": {"slots": model.slots, "step_ms": model.step_s * 1000, "capacity_tokens_per_s": model.capacity},
        "sizes": {"prompts": sz.prompts, "k": sz.k, "n": sz.n, "judge": "structured"},
    }
    with tempfile.TemporaryDirectory() as d:
        for n in servers:
            with simulated(n, False, model) as (urls, workers):
                client = SGLangClient(urls, retries=2, backoff_s=0.05)
                client.check_servers()
                backend = SGLangBackend(client, tok, weight_version="M1")
                by = report.setdefault(f"{n} server" + ("s" if n > 1 else ""), {})
                for mode in ("staged", "streamed"):
                    store = RunStore(Path(d) / f"{n}_{mode}")
                    store.migrate()
                    store.write("prompts", [dict(p, iteration=1) for p in prompts])
                    before = sum(sim_stats(w)["tokens"] for w in workers)
                    t0, wall0 = time.monotonic(), datetime.now()
                    if mode == "staged":
                        staged(store, backend)
                    else:
                        stream_iteration(store, QuietUI(), cfg, t, job, 1, prompts, lambda: backend, meta=True)
                    seconds = time.monotonic() - t0
                    tokens = sum(sim_stats(w)["tokens"] for w in workers) - before
                    by[mode] = {
                        "tokens": tokens,
                        "seconds": round(seconds, 2),
                        "of_capacity": round(tokens / seconds / (model.capacity * n), 3),
                        "samples": {
                            t: store.fetch(f"SELECT count(*) AS c FROM {t}")[0]["c"]
                            for t in ("responses", "judgements", "meta_judgements")
                        },
                        "stages": _spans(store, wall0, seconds),
                    }
                by["streamed over staged"] = round(by["streamed"]["of_capacity"] / by["staged"]["of_capacity"], 2)
    return report


TOPICS = (
    "explain, with an example, how a lever works.",
    "write a short letter declining a job offer politely.",
    "compare two ways to sort a list and when each is faster.",
    "summarise why the sky looks blue.",
    "give three tips for a first marathon.",
    "describe how a vaccine trains the immune system.",
)


def _spans(store, t0: datetime, seconds: float) -> dict:
    """Each stage's (start, end) as shares of the window, from its stages row (0: the window's start,
    1: its end, when the call returned)."""
    rows = store.fetch("SELECT stage, started_at, finished_at FROM stages WHERE iteration = 1")
    at = lambda t: round((t - t0).total_seconds() / seconds, 3)  # noqa: E731
    return {r["stage"]: [at(r["started_at"]), at(r["finished_at"])] for r in rows}


def fmt_window(report: dict) -> str:
    m, sz = report["model"], report["sizes"]
    lines = [
        f"one iteration's actor + judge + meta-judge window: {sz['prompts']} prompts x K={sz['k']}, N={sz['n']} "
        f"{sz['judge']} judgements and the meta-judge, on servers of {m['slots']} slots at {m['step_ms']:g} ms/step "
        f"({m['capacity_tokens_per_s']:.0f} tokens/s each)"
    ]
    for layout, by in report.items():
        if layout in ("model", "sizes"):
            continue
        parts = []
        for mode in ("staged", "streamed"):
            v = by[mode]
            spans = ", ".join(f"{k} {a:.2f}-{b:.2f}" for k, (a, b) in v["stages"].items())
            parts.append(f"{mode} {v['of_capacity']:.0%} of capacity ({v['seconds']:.1f}s; {spans})")
        lines.append(f"{layout:9s} " + "; ".join(parts) + f"; streamed/staged {by['streamed over staged']:.2f}x")
    return "\n".join(lines)


def fmt_client(cost: dict) -> str:
    lines = [
        f"client cost against one fast simulated server ({FAST.slots} slots, {FAST.step_s * 1000:g} ms steps): "
        "CPU of this process (all threads) per sample, the samples/s one core sustains at that cost, where it went"
    ]
    for label, v in cost.items():
        parts = ", ".join(f"{k} {v[f'share_{k}']:.0%}" for k in CLIENT_PARTS if v.get(f"share_{k}") is not None)
        lines.append(
            f"{label:11s} {v['ms_per_sample']:.2f} ms/sample ({v['samples']} samples; user {v['user_s']:.1f}s, "
            f"system {v['sys_s']:.1f}s) -> {v['samples_per_cpu_s'] or 0:.0f} samples/s per core; {parts}, rest the remainder"
        )
    return "\n".join(lines)


def fmt(report: dict) -> str:
    lines = [
        f"simulated servers: {report['model']['slots']} slots, {report['model']['step_ms']} ms/step "
        f"({report['model']['capacity_tokens_per_s']:.0f} tokens/s each)"
    ]
    for label, by in report["stages"].items():
        parts = [
            f"{k}: {v['of_capacity']:.0%} of capacity ({v['samples']} samples, {v['seconds']:.1f}s)"
            for k, v in by.items()
            if isinstance(v, dict)
        ]
        parts += [f"{k} {v:.2f}x" for k, v in by.items() if not isinstance(v, dict)]
        lines.append(f"{label:11s} " + "; ".join(parts))
    return "\n".join(lines)
