"""End to end: the real `mrtk run` on the embedded model (tiny config), then its tables.

These start real subprocesses and run real generation and DPO on SmolLM2-135M (~1 minute each).
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

from conftest import TINY, mrtk


def db_of(out: Path) -> Path:
    [db] = list(out.glob("*/mrtk.duckdb"))
    return db


def rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def check_complete(db: Path) -> None:
    """Every table holds exactly what a finished tiny run must hold: no duplicates, no gaps."""
    k, n, per = TINY["actor"]["k"], TINY["judge"]["n"], TINY["prompts"]["per_iteration"]
    assert rows(db, "SELECT status FROM runs") == [("success",)]
    assert rows(db, "SELECT iteration, count(*), count(DISTINCT prompt_id) FROM prompts GROUP BY 1 ORDER BY 1") == [(1, per, per), (2, per, per)]
    assert rows(db, "SELECT iteration, count(*), count(DISTINCT response_id) FROM responses GROUP BY 1 ORDER BY 1") == [(1, per * k, per * k), (2, per * k, per * k)]
    # each non-duplicate response has exactly n judgements, with sample indexes 0..n-1
    assert rows(db, f"""SELECT count(*) FROM responses r WHERE NOT is_duplicate AND
                       (SELECT count(*) FROM judgements j WHERE j.response_id = r.response_id) != {n}""") == [(0,)]
    assert rows(db, "SELECT count(*) - count(DISTINCT judgement_id) FROM judgements") == [(0,)]
    assert rows(db, "SELECT count(*) FROM judgements WHERE raw_text IS NULL OR raw_text = ''") == [(0,)]
    # the meta-judge saw every ordered pair of valid judgements of each picked response
    assert rows(db, """SELECT count(*) FROM (SELECT response_id, count(*) AS m,
                         (SELECT count(*) FROM judgements j WHERE j.response_id = mj.response_id AND score IS NOT NULL) AS v
                       FROM meta_judgements mj GROUP BY response_id) WHERE m != v * (v - 1)""") == [(0,)]
    assert rows(db, "SELECT iteration, kind, count(*) FROM pairs GROUP BY ALL ORDER BY ALL") == \
        [(1, "actor", per), (1, "judge", per), (2, "actor", per), (2, "judge", per)]
    # every pair's ids resolve; no unparsed judgement is in a pair
    assert rows(db, """SELECT count(*) FROM pairs p WHERE status = 'kept' AND kind = 'actor' AND
                       (SELECT count(*) FROM responses r WHERE r.response_id IN (p.chosen_id, p.rejected_id)) != 2""") == [(0,)]
    assert rows(db, """SELECT count(*) FROM pairs p JOIN judgements j ON j.judgement_id IN (p.chosen_id, p.rejected_id)
                       WHERE p.kind = 'judge' AND j.score IS NULL""") == [(0,)]
    assert rows(db, "SELECT iteration, count(*) FROM stages WHERE status = 'done' GROUP BY 1 ORDER BY 1") == [(1, 5), (2, 5)]
    assert [r[0] for r in rows(db, "SELECT iteration FROM lineage ORDER BY 1")] == [1, 2]


def test_run_completes_two_iterations(finished_run):
    check_complete(db_of(finished_run / "runs"))


def test_second_iteration_uses_the_model_the_first_trained(finished_run):
    db = db_of(finished_run / "runs")
    (m2,) = rows(db, "SELECT output_model FROM lineage WHERE iteration = 1")[0]
    assert m2 == "models/M2" and (db.parent / m2 / "model.safetensors").is_file()
    assert rows(db, "SELECT base_model FROM lineage WHERE iteration = 2")[0][0] == m2
    assert rows(db, "SELECT DISTINCT model_version FROM responses WHERE iteration = 2") == [("M2",)]
    # training logged real steps with losses
    assert rows(db, "SELECT count(*) > 0, bool_and(loss IS NOT NULL) FROM train_metrics WHERE iteration = 1") == [(True, True)]


def test_query_csv_counts(finished_run):
    res = mrtk("query", "select iteration, count(*) from judgements group by 1 order by 1", "--format", "csv", cwd=finished_run, check=True)
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "iteration,count_star()"
    db = db_of(finished_run / "runs")
    expected = rows(db, "select iteration, count(*) from judgements group by 1 order by 1")
    assert [tuple(map(int, line.split(","))) for line in lines[1:]] == expected


def test_query_json_stdin_and_runs_listing(finished_run):
    res = subprocess.run([sys.executable, "-m", "mrtk.cli", "query", "-", "--format", "json"], cwd=finished_run,
                         input="select count(*) as n from pairs", capture_output=True, text=True, check=True)
    assert json.loads(res.stdout)[0]["n"] == 4 * TINY["prompts"]["per_iteration"]
    listing = mrtk("runs", cwd=finished_run, check=True).stdout
    assert "success" in listing and "2/2" in listing


def test_kill_mid_iteration_then_resume(tmp_path, tiny_config, model_dir):
    """SIGKILL a real run once judgements are being written, then `--resume`: no duplicates, no gaps."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "mrtk.cli", "run", str(tiny_config), "--quiet"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
            live = mrtk("query", "select count(*) as n from judgements", "--run", str(db.parent), "--format", "json", cwd=tmp_path)
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
    mrtk("run", "--resume", str(db.parent), "--quiet", cwd=tmp_path, check=True, timeout=900)
    check_complete(db)
    # what was recorded before the kill is still there, unchanged
    after = dict((r[0], r[1:]) for r in rows(db, "SELECT judgement_id, raw_text, score FROM judgements"))
    assert all(after[jid] == (raw, score) for jid, raw, score in before)
