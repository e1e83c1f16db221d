"""Shared fixtures: the real embedded model and a tiny experiment config for end-to-end runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml


def _share_the_cores() -> None:
    """Under pytest-xdist each worker gets its share of the cores for torch's threads (and the
    processes its tests start inherit it): two workers each running two threads on two cores
    fight for them. Set before any test imports torch; a thread count set outside wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))
        if "torch" in sys.modules:  # a plugin imported it first: it read the variable already
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores()

TINY = {
    "name": "tiny",
    "seed": 3,
    "iterations": 2,
    "prompts": {"per_iteration": 4},
    "actor": {"k": 2, "max_new_tokens": 16},
    "judge": {"n": 2, "max_new_tokens": 10},
    "meta_judge": {"max_new_tokens": 6},
    "pairs": {"judge_share_cap": None},
    "train": {"epochs": [1], "batch_size": 2, "micro_batch_size": 2},
    "runtime": {"max_batch_rows": 4},
}


# The shared evaluation data beside the project (../shared/data), or wherever MRTK_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("MRTK_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data():
    """need("alpaca_eval/x.csv") -> the file's path in the shared evaluation data, or the test skips
    naming it (a checkout without ../shared/data)."""

    def need(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.exists():
            pytest.skip(f"{path} is not here (shared evaluation data)")
        return path

    return need


@pytest.fixture(scope="session")
def model_dir() -> str:
    from mrtk.models import embedded_model_dir

    return str(embedded_model_dir())


@pytest.fixture(scope="session")
def tiny_model_dir(model_dir, tmp_path_factory) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template (0.2 init: peaked logits,
    not flat ones): for what must hold on any weights in any dtype, at a cost the CPU's lack of
    bf16 hardware does not turn into minutes (emulated bf16 is ~35x slower than fp32)."""
    from mrtk.models import random_llama

    return random_llama(model_dir, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture()
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def mrtk(*args: str, cwd: Path, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run the real `mrtk` command line (`mrtk.cli.main`, argv, exit code, stdout, stderr) in this
    process: the imports (torch, transformers, LiteLLM: seconds each) are paid once per test session
    instead of once per call. An exception main() does not turn into a one-line error is printed as
    a traceback on stderr, as the command would print it. MRTK_TEST_SUBPROCESS=1 runs each call in
    a subprocess instead. Tests that kill or watch a process start one themselves."""
    if os.environ.get("MRTK_TEST_SUBPROCESS") == "1":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        kw.pop("input", None)
        res = subprocess.run(
            [sys.executable, "-m", "mrtk.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, **kw
        )
    else:
        res = _in_process(list(args), cwd)
    if check and res.returncode != 0:
        raise AssertionError(f"mrtk {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


def _in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import signal
    import traceback

    from mrtk import cli

    out, err, code = io.StringIO(), io.StringIO(), 0
    here, argv, sigterm = os.getcwd(), sys.argv, signal.getsignal(signal.SIGTERM)
    os.chdir(cwd)
    sys.argv = ["mrtk", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - what the process would die of, printed as it would print it
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        sys.argv = argv
        signal.signal(signal.SIGTERM, sigterm)  # `mrtk run` installs its own
    return subprocess.CompletedProcess(["mrtk", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One finished tiny run (2 iterations), made in-process in seconds by the scripted policy and
    DPO step (tests/scripted.py): the real stages, parsing and store, scripted model calls. Its
    model versions are the tiny random model's files linked (SmolLM2's tokenizer and template), so
    `mrtk eval` / `mrtk judge` on it load and run a real transformers model through the real
    backend, at a cost that does not depend on the CPU's kind (the embedded model's ~600-token
    judge prefills took most of a minute per test where fp32 is capped at AVX2). `real_run` is
    the same run on the real model (slow tests)."""
    from scripted import ScriptedPolicy, scripted_train

    from mrtk.config import load_config
    from mrtk.inputs import check_inputs
    from mrtk.loop import Loop
    from mrtk.runs import new_run

    work = tmp_path_factory.mktemp("run")
    cfg_path = work / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY, "model": tiny_model_dir}))
    cfg = load_config(cfg_path, [])
    inputs = check_inputs(cfg, work)
    store = new_run(inputs.cfg, str(cfg_path), work / "runs")
    Loop(store, inputs, open_policy=ScriptedPolicy().opener, train=scripted_train).run()
    return work


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, model_dir) -> Path:
    """One finished tiny run (2 iterations on the embedded model, real DPO), for the slow tests."""
    work = tmp_path_factory.mktemp("real_run")
    cfg = work / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    mrtk("run", str(cfg), "--quiet", cwd=work, check=True, timeout=900)
    return work


SCRIPTED_RUN = str(Path(__file__).resolve().parent / "scripted_run.py")  # `mrtk run`'s path with the scripted policy

# What must be identical between a resumed run and an uninterrupted one (test_faults, test_orchestration).
SNAPSHOT = {
    "prompts": "SELECT iteration, prompt_id, text FROM prompts",
    "responses": "SELECT response_id, text, n_tokens, finish_reason, is_duplicate, model_version, seed FROM responses",
    "judgements": "SELECT judgement_id, raw_text, score, parse_status, seed FROM judgements",
    "meta_judgements": "SELECT meta_id, raw_text, verdict, winner FROM meta_judgements",
    "elo": "SELECT judgement_id, round(elo, 6) FROM elo",
    "pairs": "SELECT pair_id, status, reason, chosen_id, rejected_id FROM pairs",
    "train_metrics": "SELECT iteration, step, round(loss, 5) FROM train_metrics",
    "lineage": "SELECT iteration, base_model, output_model, pairs_trained FROM lineage",
}


def snapshot(db: Path) -> dict[str, set]:
    return {table: set(rows(db, sql)) for table, sql in SNAPSHOT.items()}


def db_of(out: Path) -> Path:
    [db] = list(out.glob("*/mrtk.duckdb"))
    return db


def rows(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def check_complete(db: Path, cfg: dict = TINY) -> None:
    """Every table holds exactly what a finished tiny run must hold: no duplicates, no gaps."""
    k, n, per = cfg["actor"]["k"], cfg["judge"]["n"], cfg["prompts"]["per_iteration"]
    assert rows(db, "SELECT status FROM runs") == [("success",)]
    assert rows(db, "SELECT iteration, count(*), count(DISTINCT prompt_id) FROM prompts GROUP BY 1 ORDER BY 1") == [
        (1, per, per),
        (2, per, per),
    ]
    assert rows(db, "SELECT iteration, count(*), count(DISTINCT response_id) FROM responses GROUP BY 1 ORDER BY 1") == [
        (1, per * k, per * k),
        (2, per * k, per * k),
    ]
    # each non-duplicate response has exactly n judgements, with sample indexes 0..n-1
    assert rows(
        db,
        f"""SELECT count(*) FROM responses r WHERE NOT is_duplicate AND
                       (SELECT count(*) FROM judgements j WHERE j.response_id = r.response_id) != {n}""",
    ) == [(0,)]
    assert rows(db, "SELECT count(*) - count(DISTINCT judgement_id) FROM judgements") == [(0,)]
    assert rows(db, "SELECT count(*) FROM judgements WHERE raw_text IS NULL OR raw_text = ''") == [(0,)]
    # the meta-judge saw every ordered pair of valid judgements of each picked response
    assert rows(
        db,
        """SELECT count(*) FROM (SELECT response_id, count(*) AS m,
                         (SELECT count(*) FROM judgements j WHERE j.response_id = mj.response_id AND score IS NOT NULL) AS v
                       FROM meta_judgements mj GROUP BY response_id) WHERE m != v * (v - 1)""",
    ) == [(0,)]
    assert rows(db, "SELECT iteration, kind, count(*) FROM pairs GROUP BY ALL ORDER BY ALL") == [
        (1, "actor", per),
        (1, "judge", per),
        (2, "actor", per),
        (2, "judge", per),
    ]
    # every pair's ids resolve; no unparsed judgement is in a pair
    assert rows(
        db,
        """SELECT count(*) FROM pairs p WHERE status = 'kept' AND kind = 'actor' AND
                       (SELECT count(*) FROM responses r WHERE r.response_id IN (p.chosen_id, p.rejected_id)) != 2""",
    ) == [(0,)]
    assert rows(
        db,
        """SELECT count(*) FROM pairs p JOIN judgements j ON j.judgement_id IN (p.chosen_id, p.rejected_id)
                       WHERE p.kind = 'judge' AND j.score IS NULL""",
    ) == [(0,)]
    assert rows(db, "SELECT iteration, count(*) FROM stages WHERE status = 'done' GROUP BY 1 ORDER BY 1") == [
        (1, 5),
        (2, 5),
    ]
    assert [r[0] for r in rows(db, "SELECT iteration FROM lineage ORDER BY 1")] == [1, 2]


@pytest.fixture()
def run_copy(finished_run, tmp_path):
    """The shared finished run's database in a run directory of its own (models linked, not
    copied), for tests that add rows to a run."""
    import shutil

    src = next((finished_run / "runs").iterdir())
    dst = tmp_path / "runs" / src.name
    dst.mkdir(parents=True)
    shutil.copy(src / "mrtk.duckdb", dst / "mrtk.duckdb")
    (dst / "models").symlink_to(src / "models")
    return dst
