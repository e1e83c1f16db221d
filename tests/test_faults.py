"""Crash anywhere, resume, and end with exactly the run that was never interrupted.

Each trial starts a real `mrtk run` (tiny config, embedded model) in a subprocess and kills it
with SIGKILL: at the n-th pass of a crash point (`mrtk/faults.py`: inside a DuckDB transaction
before COMMIT, after a generation batch, after a DPO step, after the LoRA merge, between
writing a model and renaming it into place) or after a random delay. Then `mrtk run --resume`
finishes it. After each trial:

- every table holds exactly what a finished run holds (no duplicate, missing or orphaned rows;
  every pair's ids resolve; lineage M1 -> M2 -> M3 with the models on disk, no temp leftovers);
- every row committed before the kill is unchanged;
- every table equals an uninterrupted run of the same config and seed, row for row.

The last holds because the config decodes one request per backend call (`max_batch_rows: 1`):
a row regenerated after the kill sees exactly the computation it would have seen. With bigger
batches a regenerated row is batched with other neighbours (other left padding), its bf16
logits can differ in the last bits, and sampled text can differ from the uninterrupted run;
the first two checks still hold (that is what `tests/test_loop.py` checks with default batching).

The default suite runs a trial of the same process shape with the scripted policy and DPO step
(`tests/scripted_run.py`: the real config, store, loop and DuckDB; killed inside a DuckDB
transaction), in seconds; `python -m pytest -m slow tests/test_faults.py` runs 3 trials on
the real model, every crash point, and `-m soak` 20 (about half an hour; not in CI).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import SCRIPTED_RUN, SNAPSHOT, TINY, check_complete, db_of, mrtk, rows, snapshot

FAULT_CFG = {**TINY, "runtime": {"max_batch_rows": 1}}
POINTS = ("db.commit", "generate.batch", "train.step", "train.merge", "save_model")
FIRST_KILLABLE_COMMIT = 3  # commits 1-2 create the schema and the runs row: see test_kill_before_the_run_exists

GENERATED = ("responses", "judgements", "meta_judgements")  # rows written once and never rewritten


SCRIPTED_POINTS = ("db.commit", "generate.batch", "train.step")  # the scripted DPO step merges and saves nothing


def start(work: Path, env_extra: dict, runner: str = "real", config: dict | None = None) -> subprocess.Popen:
    """runner real: `mrtk run`; scripted: tests/scripted_run.py; sglang: the same with `config`'s
    SGLang servers (tests/test_serving.py: simulated ones) and the real SGLang client."""
    cfg = (
        work / "faults.yaml"
    )  # one request per call for the real model (see above); the scripted one is exact in any batch
    cfg.write_text(yaml.safe_dump(config or (FAULT_CFG if runner == "real" else TINY)))
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    cmd = (
        [sys.executable, SCRIPTED_RUN, str(cfg)]
        if runner != "real"
        else [sys.executable, "-m", "mrtk.cli", "run", str(cfg), "--quiet"]
    )
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def resume(work: Path, run_dir: Path, runner: str) -> subprocess.CompletedProcess:
    """`--resume` (the kill is what needs a process; the resume runs in this one for the scripted runner)."""
    if runner != "real":
        import scripted_run

        scripted_run.main(["--resume", str(run_dir)])
        return subprocess.CompletedProcess(["scripted_run", "--resume"], 0, "", "")
    return mrtk("run", "--resume", str(run_dir), "--quiet", cwd=work, timeout=1200)


def uninterrupted(work: Path, runner: str, config: dict | None = None, points=None) -> dict:
    """The uninterrupted run, counting how often it passes each crash point."""
    log = work / "points.log"
    t0 = time.time()
    proc = start(work, {"MRTK_FAULT_LOG": str(log)}, runner, config)
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-3000:]
    db = db_of(work / "runs")
    check_complete(db, config or FAULT_CFG)
    return {
        "snapshot": snapshot(db),
        "counts": Counter(log.read_text().split()),
        "seconds": time.time() - t0,
        "runner": runner,
        "points": points or (SCRIPTED_POINTS if runner == "scripted" else POINTS),
        "config": config,
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return uninterrupted(tmp_path_factory.mktemp("baseline"), "real")


@pytest.fixture(scope="module")
def scripted_baseline(tmp_path_factory):
    return uninterrupted(tmp_path_factory.mktemp("scripted_baseline"), "scripted")


def trial(work: Path, baseline: dict, point: str | None, n: int, delay: float = 0.0) -> dict:
    """Kill one run at `point`:n (or after `delay` seconds), resume it, check it. Returns a summary."""
    runner = baseline["runner"]
    for _ in range(4):
        proc = start(work, {"MRTK_FAULT": f"{point}:{n}"} if point else {}, runner, baseline.get("config"))
        if point is None:
            try:
                proc.wait(
                    timeout=delay
                )  # finished before the kill (a faster machine than the baseline's): shorter delay
                subprocess.run(["rm", "-rf", str(work / "runs")], check=True)
                delay /= 2
                continue
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        break
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == -signal.SIGKILL, f"{point}:{n} did not kill the run (rc {proc.returncode}): {err[-2000:]}"
    db = db_of(work / "runs")
    before = snapshot(db)
    stage = rows(db, "SELECT iteration || ':' || stage FROM stages WHERE status = 'running'") or [("between stages",)]
    res = resume(work, db.parent, runner)
    assert res.returncode == 0, res.stderr[-3000:]
    check_complete(db, baseline.get("config") or FAULT_CFG)
    after = snapshot(db)
    for table in GENERATED:
        assert before[table] <= after[table], f"{table}: rows committed before the kill changed after the resume"
    for table in SNAPSHOT:
        assert after[table] == baseline["snapshot"][table], f"{table} differs from the uninterrupted run"
    models = sorted(p.name for p in (db.parent / "models").iterdir())
    assert models == ["M2", "M3"], f"model directory holds {models}"
    assert [r[0] for r in rows(db, "SELECT DISTINCT model_version FROM responses WHERE iteration = 2")] == ["M2"]
    assert rows(db, "SELECT output_model FROM lineage ORDER BY iteration") == [("models/M2",), ("models/M3",)]
    assert rows(db, "SELECT base_model FROM lineage WHERE iteration = 2") == [("models/M2",)]
    return {
        "kill": f"{point}:{n}" if point else f"after {delay:.1f}s",
        "stage": stage[0][0],
        "rows_before_kill": sum(len(before[t]) for t in GENERATED),
        "rows_checked": sum(len(v) for v in after.values()),
    }


def plan(
    trials: int, seed: int, counts: Counter, seconds: float, timed: int = 0, points=POINTS
) -> list[tuple[str | None, int, float]]:
    """Crash points in turn, the pass to die at drawn uniformly; `timed` trials die after a random delay."""
    rng = random.Random(seed)
    out = []
    for i in range(trials - timed):
        point = points[i % len(points)]
        low = FIRST_KILLABLE_COMMIT if point == "db.commit" else 1
        out.append((point, rng.randint(low, counts[point]), 0.0))
    out += [(None, 0, rng.uniform(8.0, 0.9 * seconds)) for _ in range(timed)]
    return out


def run_trials(tmp_path: Path, baseline: dict, trials: int, seed: int, timed: int = 0) -> list[dict]:
    assert all(baseline["counts"][p] > 0 for p in baseline["points"]), baseline["counts"]
    results = []
    for i, (point, n, delay) in enumerate(
        plan(trials, seed, baseline["counts"], baseline["seconds"], timed, baseline["points"])
    ):
        work = tmp_path / f"trial{i}"
        work.mkdir()
        results.append(trial(work, baseline, point, n, delay))
        for model_dir in (work / "runs").glob("*/models"):  # keep disk use flat: ~1 GB per trial otherwise
            subprocess.run(["rm", "-rf", str(model_dir)], check=True)
    summary = {
        "trials": len(results),
        "stages_hit": dict(Counter(r["stage"] for r in results)),
        "kills": [r["kill"] for r in results],
        "rows_checked": sum(r["rows_checked"] for r in results),
        "crash_points_in_baseline": dict(baseline["counts"]),
    }
    print("\nfault injection summary:", json.dumps(summary, indent=1))
    return results


def test_fault_injection_trial_scripted(scripted_baseline, tmp_path):
    """A kill inside a DuckDB transaction (rows written, before COMMIT); a kill between generation
    batches is test_loop.py's test_kill_mid_iteration_then_resume."""
    results = run_trials(tmp_path, scripted_baseline, trials=1, seed=1)
    assert [r["kill"].split(":")[0] for r in results] == ["db.commit"]


@pytest.mark.soak
def test_fault_injection_three_trials(baseline, tmp_path):
    """Soak, not slow: on the 2-core AVX2-only EPYC of issue 31 these three real-model trials took
    933 s plus 270 s for the baseline run, a third of the slow suite there. The slow suite keeps the
    kill -9 trials on the SGLang path and the scripted ones; `pytest -m soak` runs these."""
    results = run_trials(tmp_path, baseline, trials=3, seed=1)
    assert len(results) == 3


@pytest.mark.soak
def test_fault_injection_twenty_trials(baseline, tmp_path):
    results = run_trials(tmp_path, baseline, trials=20, seed=2, timed=4)
    assert len(results) == 20


def test_kill_before_the_run_exists(tmp_path):
    """Killed while writing its first rows (commit 2: the runs row), a run cannot be resumed, and says
    so in one line; nothing else was recorded to lose."""
    proc = start(
        tmp_path, {"MRTK_FAULT": "db.commit:2"}, "scripted"
    )  # the same commits as `mrtk run` before the loop starts
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    db = db_of(tmp_path / "runs")
    res = mrtk("run", "--resume", str(db.parent), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "was never started properly, start a new run" in res.stderr


def _file_size_limit(limit: int):
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_database_write_fails_cleanly_when_the_disk_is_full(tmp_path):
    """DuckDB cannot write (file size limit standing in for a full disk): one MrtkError naming the
    fix; every row committed before it is still there when the database is reopened."""
    code = f"""
import sys
from mrtk.errors import MrtkError
from mrtk.store import RunStore
store = RunStore({str(tmp_path)!r})
store.migrate()
try:
    for i in range(1000):
        store.write("prompts", [{{"iteration": i, "prompt_id": str(j), "text": "x" * 2000}} for j in range(200)])
except MrtkError as e:
    print(i, e)
"""
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_file_size_limit(4_000_000)
    )
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    done, message = res.stdout.split(" ", 1)
    assert int(done) > 0 and "free disk space, then: mrtk run --resume" in message and "\n" not in message.strip()
    assert rows(tmp_path / "mrtk.duckdb", "SELECT count(*), count(DISTINCT iteration) FROM prompts") == [
        (200 * int(done), int(done))
    ]


@pytest.mark.slow
def test_run_stops_with_one_line_when_the_disk_fills_while_saving_a_model(tmp_path, model_dir):
    """The first model save (~540 MB) passes a 100 MB file limit: exit 2, one line, the iteration's
    rows all committed and the run marked as failed, resumable."""
    cfg = tmp_path / "faults.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    res = subprocess.run(
        [sys.executable, "-m", "mrtk.cli", "run", str(cfg), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(100_000_000),
        timeout=1200,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "free disk space, then: mrtk run --resume" in lines[0], lines
    db = db_of(tmp_path / "runs")
    assert rows(db, "SELECT status FROM runs") == [("error",)]
    per = TINY["prompts"]["per_iteration"]
    assert rows(db, "SELECT count(*) FROM pairs WHERE iteration = 1") == [(2 * per,)]
    assert rows(db, "SELECT stage, status, error IS NOT NULL FROM stages WHERE status <> 'done'") == [
        ("train", "error", True)
    ]
    assert not (db.parent / "models" / "M2").exists()
