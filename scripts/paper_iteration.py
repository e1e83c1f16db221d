"""A paper-scale iteration, simulated end to end (issue 33 item 3): a soak run, not CI.

paper.yaml's sizes (5,000 prompts x K=7, N=11 judgements of each response, the meta-judge's
battles among the 11 judgements of each prompt's picked response) on the SGLang path against 8
simulated servers (`mrtk.bench.serving_sim`, one process each), with mrtk's real client, lanes,
DuckDB store, pairs and resume. What differs from a real run, and why:
- the servers are simulated (continuous batching at a fixed step time, seeded long-tailed answer
  lengths, a radix cache): their time is scaled (`--step-ms`) so that the 2 cores of this machine
  host them and the client, and what is reported are shares of their capacity, not seconds;
- the judge and meta-judge run in mrtk's structured mode (the score read from the choice tokens'
  logprobs: one more request per judgement than the paper's free text), because simulated free
  text carries no score to parse; `score_mode` is the only change to paper.yaml's stage settings;
- DPO is replaced by linking M1's files as M2 (no model trains here; the iteration's generation,
  bookkeeping and pairs are the subject).

One kill -9 of the run's process in the middle of the judge stage (`--kill-at`, a share of the
most judgements the iteration can have, prompts x K x N), then `--resume`: the report checks that every response has its N judgements,
once each, and every picked response its battles.

Run: python scripts/paper_iteration.py --out /tmp/paper_sim   (about 25 minutes here; --prompts 500
for a quick look). Writes OUT/report.json and prints the table the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "explain describe compare write list summarize plan design why how what which when history science "
    "garden recipe travel budget letter poem story code function bug database network health exercise "
    "music painting economy climate energy language grammar essay review product customer team meeting"
).split()


def prompts(path: Path, n: int, seed: int = 0) -> None:
    """`n` seeded prompts of 12-160 words (lengths spread as instructions' are)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = [rng.choice(WORDS) for _ in range(int(rng.lognormvariate(3.5, 0.6)) % 150 + 12)]
            f.write(json.dumps({"id": f"p{i}", "text": " ".join(words).capitalize() + "?"}) + "\n")


def config(out: Path, urls: list[str], a) -> Path:
    raw = yaml.safe_load((ROOT / "experiments" / "paper.yaml").read_text())
    raw.update(name="paper_sim", model="embedded", iterations=1)
    raw["prompts"] = {**raw["prompts"], "file": str(out / "prompts.jsonl"), "per_iteration": a.prompts}
    raw["actor"]["k"] = a.k
    raw["judge"] = {**raw["judge"], "n": a.n, "score_mode": "structured"}
    raw["meta_judge"] = {**raw["meta_judge"], "mode": "structured", "max_chosen_chars": [None]}
    raw["pairs"] = {
        **raw["pairs"],
        "rho": [0.0],
        "max_chosen_chars": [None],
        "judge_iterations": [1],
    }
    raw["train"] = {**raw["train"], "epochs": [1], "num_processes": 1, "accelerate_config": None}
    raw["sglang"] = {"urls": urls, "retries": 4, "stream_stages": not a.staged}
    path = out / "paper_sim.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def link_train(model_dir, fitted, cfg, *, iteration, seed, device, run_dir, out, ui, **_):
    """No DPO: M2 is M1's files, linked (the loop's DPO contract: a model at `out`, metrics, stats)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    stats = {"pairs_trained": len(fitted), "epochs": 1, "steps": 0, "train_seconds": 0.0, "bf16": False}
    return [], stats | {"label_smoothing": cfg.label_smoothing}


def child(argv: list[str]) -> None:
    """The run's own process: a new run from CONFIG under RUNS, or `--resume RUN_DIR`."""
    from mrtk.inputs import check_inputs
    from mrtk.loop import run_locked
    from mrtk.runs import new_run, open_run
    from mrtk.config import load_config

    if argv[0] == "--resume":
        store, cfg, config_dir = open_run(Path(argv[1]))
        inputs = check_inputs(cfg, config_dir)
    else:
        path = Path(argv[0])
        inputs = check_inputs(load_config(str(path), []), path.parent)
        store = new_run(inputs.cfg, str(path), Path(argv[1]))
        print(store.run_dir, flush=True)
    run_locked(store, inputs, train=link_train)


def get(url: str) -> dict:
    with urllib.request.urlopen(url + "/sim_stats", timeout=10) as r:
        return json.loads(r.read())


def proc(pid: int) -> tuple[float, int]:
    """(CPU seconds, user + system, of the process; its resident memory in bytes)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan"), 0
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), rss


def db_state(db: Path) -> tuple[str | None, int]:
    """(the running stages, joined by "+" in the order they began: the actor, judge and meta-judge
    stream into each other and overlap; judgements written), read between the writer's transactions."""
    from mrtk.store.db import open_readonly

    try:
        con = open_readonly(db, wait_s=2.0)
    except Exception:  # noqa: BLE001 - the writer holds it this instant; the next poll reads it
        return None, -1
    try:
        running = con.execute("SELECT stage FROM stages WHERE status = 'running' ORDER BY started_at").fetchall()
        judged = con.execute("SELECT count(*) FROM judgements WHERE iteration = 1").fetchall()[0][0]
    finally:
        con.close()
    return ("+".join(r[0] for r in running) or None), judged


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompts", type=int, default=5000)
    p.add_argument("--k", type=int, default=7)
    p.add_argument("--n", type=int, default=11)
    p.add_argument("--servers", type=int, default=8)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--step-ms", type=float, default=8.0)
    p.add_argument("--kill-at", type=float, default=0.5, help="share of prompts x K x N judgements; 0: no kill")
    p.add_argument("--staged", action="store_true", help="sglang.stream_stages: false (one stage after another)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    prompts(a.out / "prompts.jsonl", a.prompts)
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "mrtk.bench.serving_sim", "--slots", str(a.slots), "--step-ms", str(a.step_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(a.servers)
    ]
    urls = [s.stdout.readline().strip() for s in servers]
    cfg_path = config(a.out, urls, a)
    runs = a.out / "runs"
    me = [sys.executable, __file__, "--child"]
    samples, events, killed = [], [], False
    run = subprocess.Popen([*me, str(cfg_path), str(runs)], stdout=subprocess.PIPE, text=True)
    run_dir = Path(run.stdout.readline().strip())
    db = run_dir / "mrtk.duckdb"
    expected = a.prompts * a.k * a.n  # judgements at most: duplicates are not judged
    try:
        while True:
            time.sleep(1.0)
            stats = [get(u) for u in urls]
            cpu, rss = proc(run.pid)
            stage, judged = db_state(db)
            samples.append(
                {
                    "t": time.time(),
                    "stage": stage,
                    "tokens": sum(s["tokens"] for s in stats),
                    "open_entries": sum(s.get("open_entries", 0) for s in stats),
                    "open_requests": sum(s.get("open_requests", 0) for s in stats),
                    "capacity": sum(s["capacity"] for s in stats),
                    "cpu": cpu,
                    "rss": rss,
                    "run": len(events),
                }
            )
            if not killed and a.kill_at and "judge" in (stage or "").split("+") and judged >= a.kill_at * expected:
                os.kill(run.pid, signal.SIGKILL)
                run.wait()
                killed = True
                events.append({"t": time.time(), "event": "kill -9", "judgements_stored": judged, "of": expected})
                print(f"kill -9 at {judged} of {expected} judgements; resuming", flush=True)
                run = subprocess.Popen([*me, "--resume", str(run_dir)], stdout=subprocess.PIPE, text=True)
                continue
            if run.poll() is not None:
                break
    finally:
        for s in servers:
            s.terminate()
    if run.returncode:
        raise SystemExit(f"the run exited {run.returncode}")
    report = summarize(a, samples, events, db)
    (a.out / "report.json").write_text(json.dumps(report, indent=2))
    print(table(report))


def summarize(a, samples: list[dict], events: list[dict], db: Path) -> dict:
    """Per stage (by the running stages each poll saw, overlapping ones together, e.g. actor+judge; after
    the kill apart):
    the servers' decoded tokens over their capacity for the stage's wall time, peak open requests and
    samples, the run process's CPU seconds and peak RSS; then the checks and the database's size."""
    import duckdb

    stages: dict[str, list[dict]] = {}
    for prev, s in zip(samples, samples[1:]):
        if s["stage"] is None or prev["run"] != s["run"]:
            continue
        name = s["stage"] + (" (after kill -9)" if s["run"] else "")
        stages.setdefault(name, []).append((prev, s))
    per_stage = {}
    for name, steps in stages.items():
        seconds = sum(s["t"] - p["t"] for p, s in steps)
        tokens = sum(s["tokens"] - p["tokens"] for p, s in steps)
        cpu = sum(s["cpu"] - p["cpu"] for p, s in steps if s["cpu"] == s["cpu"] and p["cpu"] == p["cpu"])
        per_stage[name] = {
            "seconds": round(seconds, 1),
            "share_of_capacity": round(tokens / (steps[0][1]["capacity"] * seconds), 3) if seconds else None,
            "peak_open_requests": max(s["open_requests"] for _, s in steps),
            "peak_open_samples": max(s["open_entries"] for _, s in steps),
            "client_cpu_s": round(cpu, 1),
            "client_cpu_share_of_wall": round(cpu / seconds, 2) if seconds else None,
            "peak_rss_mib": round(max(s["rss"] for _, s in steps) / 2**20),
        }
    con = duckdb.connect(str(db), read_only=True)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    checks = {
        "responses": q("SELECT count(*) FROM responses")[0][0],
        "distinct_responses": q("SELECT count(*) FROM responses WHERE NOT is_duplicate")[0][0],
        "judgements": q("SELECT count(*) FROM judgements WHERE source = 'loop'")[0][0],
        "responses_without_n_judgements": q(
            f"""SELECT count(*) FROM responses r LEFT JOIN (SELECT response_id, count(*) c,
                count(DISTINCT sample_idx) d FROM judgements GROUP BY 1) j USING (response_id)
                WHERE NOT r.is_duplicate AND (j.c IS DISTINCT FROM {a.n} OR j.d IS DISTINCT FROM {a.n})"""
        )[0][0],
        "meta_judgements": q("SELECT count(*) FROM meta_judgements")[0][0],
        "picked_responses": q("SELECT count(DISTINCT response_id) FROM meta_judgements")[0][0],
        "meta_per_picked": q(
            "SELECT min(c), max(c) FROM (SELECT response_id, count(*) c FROM meta_judgements GROUP BY 1)"
        )[0],
        "pairs": q("SELECT kind, status, count(*) FROM pairs GROUP BY ALL ORDER BY ALL"),
        "stages": q("SELECT stage, status, round(seconds, 1) FROM stages ORDER BY started_at"),
    }
    con.close()
    return {
        "sizes": {
            "prompts": a.prompts,
            "k": a.k,
            "n": a.n,
            "servers": a.servers,
            "slots": a.slots,
            "step_ms": a.step_ms,
            "stages": "staged" if a.staged else "streamed",
        },
        "events": events,
        "stages": per_stage,
        "checks": checks,
        "duckdb_mib": round(db.stat().st_size / 2**20, 1),
    }


def table(r: dict) -> str:
    lines = [
        f"{r['sizes']}",
        f"{'stage':28} {'wall s':>7} {'share':>6} {'open req':>8} {'open smp':>8} {'client CPU s':>12} {'RSS MiB':>8}",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"{name:28} {s['seconds']:7.0f} {s['share_of_capacity'] or 0:6.0%} {s['peak_open_requests']:8} "
            f"{s['peak_open_samples']:8} {s['client_cpu_s']:12.0f} {s['peak_rss_mib']:8}"
        )
    lines.append(f"events: {r['events']}")
    lines.append(f"checks: {r['checks']}")
    lines.append(f"DuckDB after the iteration: {r['duckdb_mib']} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
