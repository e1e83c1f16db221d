"""End to end: `mrtk run` in a subprocess (tiny config), then its tables.

The `real` cases run real generation and DPO on SmolLM2-135M (~1 minute each; `slow`). The
`scripted` cases run the same process shape (config, run row, writer lock, loop, DuckDB) with the
scripted policy of tests/scripted.py (`tests/scripted_run.py`), in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from conftest import SCRIPTED_RUN, TINY, check_complete, db_of, mrtk, rows

RUNNERS = [pytest.param("scripted", id="scripted"), pytest.param("real", id="real", marks=pytest.mark.slow)]


def run_command(runner: str, config: Path, delay: float = 0.03) -> list[str]:
    """`mrtk run CONFIG --quiet`, or its scripted twin (each generate call `delay` s: long enough to watch)."""
    if runner == "scripted":
        return [sys.executable, SCRIPTED_RUN, "--delay", str(delay), str(config)]
    return [sys.executable, "-m", "mrtk.cli", "run", str(config), "--quiet"]


def resume(runner: str, run_dir: Path, cwd: Path) -> None:
    """`--resume`: the scripted one in this process (the kill is what needs a process)."""
    if runner == "scripted":
        import scripted_run

        scripted_run.main(["--resume", str(run_dir)])
    else:
        mrtk("run", "--resume", str(run_dir), "--quiet", cwd=cwd, check=True, timeout=900)


@pytest.mark.slow
def test_run_completes_two_iterations(real_run):
    check_complete(db_of(real_run / "runs"))


@pytest.mark.slow
def test_second_iteration_uses_the_model_the_first_trained(real_run):
    db = db_of(real_run / "runs")
    (m2,) = rows(db, "SELECT output_model FROM lineage WHERE iteration = 1")[0]
    assert m2 == "models/M2" and (db.parent / m2 / "model.safetensors").is_file()
    assert rows(db, "SELECT base_model FROM lineage WHERE iteration = 2")[0][0] == m2
    assert rows(db, "SELECT DISTINCT model_version FROM responses WHERE iteration = 2") == [("M2",)]
    # training logged real steps with losses
    assert rows(db, "SELECT count(*) > 0, bool_and(loss IS NOT NULL) FROM train_metrics WHERE iteration = 1") == [
        (True, True)
    ]


def test_query_csv_counts(finished_run):
    res = mrtk(
        "query",
        "select iteration, count(*) from judgements group by 1 order by 1",
        "--format",
        "csv",
        cwd=finished_run,
        check=True,
    )
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "iteration,count_star()"
    db = db_of(finished_run / "runs")
    expected = rows(db, "select iteration, count(*) from judgements group by 1 order by 1")
    assert [tuple(map(int, line.split(","))) for line in lines[1:]] == expected


def test_query_json_stdin_and_runs_listing(finished_run):
    res = subprocess.run(
        [sys.executable, "-m", "mrtk.cli", "query", "-", "--format", "json"],
        cwd=finished_run,
        input="select count(*) as n from pairs",
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(res.stdout)[0]["n"] == 4 * TINY["prompts"]["per_iteration"]
    listing = mrtk("runs", cwd=finished_run, check=True).stdout
    assert "success" in listing and "2/2" in listing


@pytest.mark.parametrize("runner", RUNNERS)
def test_kill_mid_iteration_then_resume(tmp_path, tiny_config, model_dir, runner):
    """SIGKILL a run once judgements are being written, then `--resume`: no duplicates, no gaps."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        run_command(runner, tiny_config), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    db = None
    try:
        while time.time() < deadline:
            found = list((tmp_path / "runs").glob("*/mrtk.duckdb"))
            if found:
                db = found[0]
                try:
                    n = rows(db, "SELECT count(*) FROM judgements")[0][0]
                except duckdb.Error:  # the writer holds the file for a moment
                    n = 0
                if n > 0:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("no judgements appeared within 300 s")
        # the run is live: `mrtk query` from another process still answers (it waits out the writer's short transactions)
        for _ in range(3):
            live = mrtk(
                "query",
                "select count(*) as n from judgements",
                "--run",
                str(db.parent),
                "--format",
                "json",
                cwd=tmp_path,
            )
            assert live.returncode == 0 and "Traceback" not in live.stderr, live.stderr
            assert json.loads(live.stdout)[0]["n"] >= n
        assert proc.poll() is None, "the run ended before it could be killed; make the tiny config slower"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    partial = rows(db, "SELECT count(*) FROM judgements")[0][0]
    assert 0 < partial < TINY["prompts"]["per_iteration"] * TINY["actor"]["k"] * TINY["judge"]["n"] * 2
    assert rows(db, "SELECT status FROM runs") == [("running",)]
    before = rows(db, "SELECT judgement_id, raw_text, score FROM judgements ORDER BY 1")
    resume(runner, db.parent, tmp_path)
    check_complete(db)
    # what was recorded before the kill is still there, unchanged
    after = dict((r[0], r[1:]) for r in rows(db, "SELECT judgement_id, raw_text, score FROM judgements"))
    assert all(after[jid] == (raw, score) for jid, raw, score in before)


CONSISTENCY_SQL = f"""
SELECT (SELECT count(*) FROM judgements j WHERE NOT EXISTS (SELECT 1 FROM responses r WHERE r.response_id = j.response_id)) AS orphan_judgements,
       (SELECT count(*) FROM (SELECT response_id, count(*) AS c FROM judgements GROUP BY 1) WHERE c != {TINY["judge"]["n"]}) AS torn_judgements,
       (SELECT count(*) FROM (SELECT prompt_id, iteration, count(*) AS c FROM responses GROUP BY ALL) WHERE c != {TINY["actor"]["k"]}) AS torn_responses,
       (SELECT count(*) FROM pairs p WHERE kind = 'actor' AND status = 'kept' AND
            (SELECT count(*) FROM responses r WHERE r.response_id IN (p.chosen_id, p.rejected_id)) != 2) AS dangling_pairs,
       (SELECT count(*) FROM judgements) AS judgements
"""


@pytest.mark.parametrize("runner", RUNNERS)
def test_queries_during_a_run_are_consistent(tiny_config, tmp_path, runner):
    """`mrtk query` from another process, over and over while a run writes: every answer
    comes back (no lock traceback) and shows whole transactions only: no judgement without its
    response, no response with part of its N judgements, no prompt with part of its K responses."""
    proc = subprocess.Popen(
        run_command(runner, tiny_config), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    answers = []
    try:
        while proc.poll() is None:
            if not list((tmp_path / "runs").glob("*/mrtk.duckdb")):
                time.sleep(0.2)
                continue
            res = mrtk("query", CONSISTENCY_SQL, "--format", "json", cwd=tmp_path)
            assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
            answers.append(json.loads(res.stdout)[0])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert len(answers) >= 5
    assert all(
        a["orphan_judgements"] == a["torn_judgements"] == a["torn_responses"] == a["dangling_pairs"] == 0
        for a in answers
    ), answers
    seen = [a["judgements"] for a in answers]
    assert seen == sorted(seen) and 0 < max(seen)  # reads see the run grow, never go back


@pytest.mark.slow
def test_finished_run_records_the_generation_dtype(real_run):
    from mrtk.hardware import inference_dtype

    db = db_of(real_run / "runs")
    assert rows(db, "SELECT inference_dtype, inference_dtype_reason FROM runs") == [inference_dtype("auto", "cpu")]


@pytest.mark.slow
def test_cpu_without_bf16_runs_fp32_and_logs_progress(tmp_path):
    """MRTK_CPU_BF16=0 answers the capability check as an AVX2-only CPU would: the run generates
    in fp32, says so on the runs row and at the start, and, with stderr going to a file (not a
    terminal), leaves plain progress lines instead of carriage-return bars."""
    import yaml

    cfg = tmp_path / "one.yaml"
    cfg.write_text(
        yaml.safe_dump({**TINY, "iterations": 1, "pairs": {"judge_share_cap": None, "judge_iterations": [1]}})
    )
    log = tmp_path / "log"
    with open(log, "w") as fh:
        res = subprocess.run(
            [sys.executable, "-m", "mrtk.cli", "run", str(cfg), "--set", "train.bf16=off"],
            cwd=tmp_path,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, MRTK_CPU_BF16="0"),
            timeout=900,
        )
    text = log.read_text()
    assert res.returncode == 0, text[-3000:]
    db = db_of(tmp_path / "runs")
    dtype, reason = rows(db, "SELECT inference_dtype, inference_dtype_reason FROM runs")[0]
    assert dtype == "float32" and "MRTK_CPU_BF16=0" in reason
    assert "generation dtype: float32" in text
    assert "\r" not in text
    for stage in ("it1 actor", "it1 judge", "it1 meta-judge", "it1 train"):
        assert f"{stage}" in text and any(line.startswith(stage) and ": done " in line for line in text.splitlines()), (
            stage
        )
    assert rows(db, "SELECT stats->>'bf16' FROM lineage") == [("false",)]


@pytest.mark.slow
def test_judge_health_probe_and_frozen_set(tmp_path):
    """probe.file + probe.frozen: M1 and M2 judge the human pairs and re-judge the frozen responses;
    each iteration has agreement, drift and saturation with intervals, the report shows them, and
    no probe or drift judgement ever reaches a pair."""
    import yaml

    probe = tmp_path / "humans.jsonl"
    probe.write_text(
        "".join(
            json.dumps(x) + "\n"
            for x in [
                {"input": "What is 2+2?", "output_1": "4.", "output_2": "Five, I think.", "label": 1},
                {"input": "Name a colour.", "output_1": "Chair.", "output_2": "Blue.", "label": 2},
                {"input": "Say hello in French.", "output_1": "Bonjour.", "output_2": "Hola.", "label": 1},
                {"input": "Capital of Italy?", "output_1": "Paris.", "output_2": "Rome.", "label": 2},
            ]
        )
    )
    cfg = tmp_path / "health.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "probe": {"file": str(probe), "limit": 3, "frozen": 4}}))
    res = subprocess.run(
        [sys.executable, "-m", "mrtk.cli", "run", str(cfg)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        "judge health: 12 judge calls per iteration on 3 human pairs, 8 per iteration from 2 on 4 frozen responses"
        in res.stderr
    )
    assert "judge vs humans (humans)" in res.stderr and "judge drift (frozen)" in res.stderr
    db = db_of(tmp_path / "runs")
    got = rows(
        db, "SELECT iteration, metric, ci_low IS NOT NULL FROM eval_results WHERE eval = 'probe:humans' ORDER BY 1, 2"
    )
    assert {(i, m) for i, m, _ in got} >= {(0, "agreement"), (0, "tie_rate"), (1, "agreement"), (1, "agreement_change")}
    assert all(has_ci for _, m, has_ci in got if m in ("agreement", "agreement_without_ties", "tie_rate"))
    assert [has_ci for _, m, has_ci in got if m == "agreement_change"] == [
        False
    ]  # 3 paired pairs: too few for an interval
    assert rows(db, "SELECT count(*) FROM eval_items WHERE eval = 'probe:humans'") == [
        (2 * 3 * 2 * TINY["judge"]["n"],)
    ]
    frozen = dict(rows(db, "SELECT iteration || ':' || metric, value FROM eval_results WHERE eval = 'frozen'"))
    assert frozen["0:mean_shift"] == 0.0 and "1:mean_shift" in frozen and "1:top_score_share" in frozen
    assert rows(db, "SELECT count(*) FROM judgements WHERE source = 'drift'") == [(4 * TINY["judge"]["n"],)]
    assert rows(
        db,
        """SELECT count(*) FROM pairs p JOIN judgements j ON j.judgement_id IN (p.chosen_id, p.rejected_id)
                       WHERE p.kind = 'judge' AND j.source <> 'loop'""",
    ) == [(0,)]
    mrtk("report", "--out", str(tmp_path / "r.html"), cwd=tmp_path, check=True)
    html = (tmp_path / "r.html").read_text()
    assert "<h2>Judge health</h2>" in html and "judge vs humans" in html and "judge verdict" in html
