"""The loop's orchestration in-process, with a scripted policy and DPO step (tests/scripted.py):
every stage's rows, skip and resume, chunked persistence, the stage rows' statuses, the probe,
and what the loop asks of its policy. Seconds each; the same checks with the real model are the
`slow` end-to-end tests (test_loop.py, test_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY, check_complete, rows, snapshot
from scripted import Crash, ScriptedBackend, ScriptedPolicy, scripted_train

from mrtk.config import validate_config
from mrtk.errors import MrtkError
from mrtk.inputs import check_inputs
from mrtk.loop import Loop
from mrtk.runs import new_run, open_run
from mrtk.store.db import DB_NAME


def start(tmp_path: Path, **sections) -> tuple:
    raw = {**TINY, **sections}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    inputs = check_inputs(validate_config(raw), tmp_path)
    return new_run(inputs.cfg, str(path), tmp_path / "runs"), inputs


def run(store, inputs, policy: ScriptedPolicy) -> None:
    Loop(store, inputs, open_policy=policy.opener, train=scripted_train).run()


def resume(run_dir: Path, policy: ScriptedPolicy) -> None:
    store, cfg, config_dir = open_run(run_dir)
    run(store, check_inputs(cfg, config_dir), policy)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp("whole")
    store, inputs = start(work)
    policy = ScriptedPolicy()
    run(store, inputs, policy)
    return store.run_dir / DB_NAME, policy


def test_a_scripted_run_is_complete(uninterrupted):
    db, _ = uninterrupted
    check_complete(db)


def test_the_loop_opens_releases_resumes_and_closes_its_policy(uninterrupted):
    """The loop asks only the Policy protocol: opened once, memory released before and resumed after
    each DPO step, closed once at the end; iteration 2 generates with the model iteration 1 trained."""
    _, policy = uninterrupted
    control = [c[0] for c in policy.calls if c[0] != "generate"]
    assert control == ["open", "release", "resume", "release", "resume", "close"]
    models = [c[1] for c in policy.calls if c[0] == "generate"]
    assert (
        models[0] == Path(models[0]).name
        and "M2" in models
        and models.index("M2") > max(i for i, m in enumerate(models) if m != "M2")
    )


@pytest.mark.parametrize(
    "share,window", [(0.05, 0), (0.6, 0), (0.6, 8)]
)  # iteration 1's actor stage, iteration 2; served
def test_crash_mid_stage_is_an_error_row_and_resume_equals_the_uninterrupted_run(
    tmp_path, uninterrupted, share, window
):
    """A backend that dies after N samples (a share of the whole run's): the run and the stage say
    `error` with the reason, the chunks finished before it are kept, and a resume ends with exactly
    the uninterrupted run. `window` 8: served like SGLang, calls in flight from run_chunks' lanes
    and rows streamed to DuckDB as they finish."""
    crash_after = int(share * uninterrupted[1].samples)
    store, inputs = start(tmp_path)
    with pytest.raises(Crash):
        run(store, inputs, ScriptedPolicy(crash_after=crash_after, window=window))
    db = store.run_dir / DB_NAME
    assert rows(db, "SELECT status, error LIKE '%scripted crash%' FROM runs") == [("error", True)]
    [(stage, error)] = rows(db, "SELECT stage, error FROM stages WHERE status = 'error'")
    assert error.startswith(f"Crash: scripted crash after {crash_after} samples")
    assert rows(db, "SELECT count(*) FROM stages WHERE status = 'running'") == [(0,)]
    kept = snapshot(db)
    resume(store.run_dir, ScriptedPolicy(window=window))
    check_complete(db)
    now = snapshot(db)
    assert now == snapshot(uninterrupted[0])
    for table in ("responses", "judgements", "meta_judgements"):  # rows written before the crash are unchanged
        assert kept[table] <= now[table]
    assert rows(db, "SELECT count(*) FROM stages WHERE status != 'done'") == [(0,)]


def test_chunks_are_persisted_as_they_finish(tmp_path):
    """max_batch_rows 4 with K=2: two prompts a chunk, so the actor stage's 8 samples are two chunks;
    a crash in the third chunk (the judge stage's first) keeps both."""
    store, inputs = start(tmp_path)
    with pytest.raises(Crash):
        run(store, inputs, ScriptedPolicy(crash_after=9))
    db = store.run_dir / DB_NAME
    assert rows(db, "SELECT count(*) FROM responses") == [(8,)]
    assert rows(db, "SELECT count(*) FROM judgements") == [(0,)]
    assert rows(db, "SELECT stage, status FROM stages ORDER BY started_at") == [("actor", "done"), ("judge", "error")]


def test_a_finished_run_resumed_does_nothing(uninterrupted):
    db, _ = uninterrupted
    before = snapshot(db)
    again = ScriptedPolicy()
    resume(db.parent, again)
    assert snapshot(db) == before and not [c for c in again.calls if c[0] == "generate"]


def test_ctrl_c_marks_the_stage_interrupted(tmp_path):
    class Interrupted(ScriptedBackend):
        def generate(self, *args, **kwargs):  # Ctrl-C during the actor stage's second chunk
            if any(c[0] == "generate" for c in self.policy.calls):
                raise KeyboardInterrupt
            return super().generate(*args, **kwargs)

    class Interrupting(ScriptedPolicy):
        def use(self, model_dir):
            return Interrupted(self, model_dir)

    store, inputs = start(tmp_path)
    with pytest.raises(MrtkError, match="interrupted; resume with"):
        run(store, inputs, Interrupting())
    db = store.run_dir / DB_NAME
    assert rows(db, "SELECT status FROM runs") == [("interrupted",)]
    assert rows(db, "SELECT stage, status, error FROM stages WHERE status != 'done'") == [
        ("actor", "interrupted", "KeyboardInterrupt: ")
    ]


def test_judge_health_probe_and_frozen_set_in_process(tmp_path):
    """The shipped probe set by name, and the frozen set: eval rows per model, the change from M1
    at M2 with no verdict on four pairs, the probe's stage rows, the frozen re-judge's rows."""
    store, inputs = start(tmp_path, probe={"file": "probe_human.jsonl", "limit": 4, "frozen": 3})
    run(store, inputs, ScriptedPolicy())
    db = store.run_dir / DB_NAME
    assert rows(db, "SELECT iteration, status FROM stages WHERE stage = 'probe' ORDER BY 1") == [
        (1, "done"),
        (2, "done"),
    ]
    assert rows(
        db, "SELECT iteration, count(*) FROM eval_items WHERE eval = 'probe:probe_human' GROUP BY 1 ORDER BY 1"
    ) == [(0, 4 * 2 * TINY["judge"]["n"]), (1, 4 * 2 * TINY["judge"]["n"])]
    [(diff, lo, n, details)] = rows(
        db,
        "SELECT value, ci_low, n, details->>'verdict' FROM eval_results "
        "WHERE eval = 'probe:probe_human' AND metric = 'agreement_change'",
    )
    assert n == 4 and lo is None and details == "too few pairs (4; a verdict needs 10)"
    assert rows(db, "SELECT count(*) FROM judgements WHERE source = 'drift'") == [(3 * TINY["judge"]["n"],)]
    assert {m for (m,) in rows(db, "SELECT metric FROM eval_results WHERE eval = 'frozen'")} >= {
        "mean_score",
        "top_score_share",
    }


def test_top_score_share_follows_the_judge_templates_range(tmp_path):
    """judge_10point (1-10): the top score is >= 9.5, not 0-5's 4.5; the summary, the trackers'
    numbers and `select * from iteration_judge_scores` read the same view."""
    from mrtk.present import trackers
    from mrtk.store import RunStore

    store, inputs = start(
        tmp_path,
        judge={**TINY["judge"], "template": "judge_10point"},
        iterations=1,
        pairs={"judge_iterations": [1], "judge_share_cap": None},
    )
    run(store, inputs, ScriptedPolicy())
    db = store.run_dir / DB_NAME
    [(by_hand,)] = rows(db, "SELECT avg((score >= 9.5)::INT) FROM judgements WHERE iteration = 1 AND source = 'loop'")
    [(wrong,)] = rows(db, "SELECT avg((score >= 4.5)::INT) FROM judgements WHERE iteration = 1 AND source = 'loop'")
    assert by_hand != wrong  # scripted 1-10 scores spread over the range: the two rules differ
    [(view, high)] = rows(
        db, "SELECT top_score_share, score_high FROM iteration_judge_scores WHERE iteration = 1 AND source = 'loop'"
    )
    assert (view, high) == (pytest.approx(by_hand), 10.0)
    numbers = RunStore(store.run_dir).iteration_numbers(1)
    assert numbers["judgements"]["top"] == pytest.approx(by_hand)
    assert trackers.loop_metrics(RunStore(store.run_dir), 1)["judge/score_top"] == pytest.approx(by_hand)


def test_the_three_switches_run_in_the_loop(tmp_path):
    """issue 25, each switch on the real stages and store (scripted model calls): soft verdicts give
    the Elo rows no position weights; consistency re-judges iteration 2 with M1 and DPO gets
    1 - mean(c) as its label smoothing; anchored rejection samples M1 on iteration 2's prompts once
    and takes every kept actor pair's rejected text from those samples."""
    store, inputs = start(
        tmp_path,
        meta_judge={**TINY["meta_judge"], "verdict": "soft"},
        train={**TINY["train"], "consistency": "avg"},
        pairs={**TINY["pairs"], "rejected_from": "initial"},
    )
    policy = ScriptedPolicy()
    run(store, inputs, policy)
    db = store.run_dir / DB_NAME
    assert rows(db, "SELECT status FROM runs") == [("success",)]
    assert rows(
        db, "SELECT iteration, list(stage ORDER BY stage) FROM stages WHERE status = 'done' GROUP BY 1 ORDER BY 1"
    ) == [
        (1, ["actor", "judge", "meta_judge", "pairs", "train"]),
        (2, ["actor", "anchor", "consistency", "judge", "meta_judge", "pairs", "train"]),
    ]
    # soft: fractional wins, no position weights
    assert rows(db, "SELECT DISTINCT w1, w2 FROM elo") == [(1.0, 1.0)]
    assert rows(db, "SELECT count(*) FROM elo WHERE weighted_wins != round(weighted_wins)")[0][0] > 0
    # consistency: M1's judgements of iteration 2's responses, one per loop judgement, and the smoothing DPO trained with
    k, n, per = TINY["actor"]["k"], TINY["judge"]["n"], TINY["prompts"]["per_iteration"]
    assert rows(
        db, "SELECT iteration, model_version, count(*) FROM judgements WHERE source = 'consistency' GROUP BY ALL"
    ) == [(2, "M1", rows(db, "SELECT count(*) FROM judgements WHERE source = 'loop' AND iteration = 2")[0][0])]
    [(c, ls, n_prompts)] = rows(
        db,
        """SELECT max(value) FILTER (WHERE metric = 'consistency'), max(value) FILTER (WHERE metric = 'label_smoothing'),
                                        max(n) FROM eval_results WHERE eval = 'consistency' AND iteration = 2""",
    )
    assert 0 < n_prompts <= per and ls == pytest.approx(min(1.0, max(0.0, 1 - c)))  # CREAM's code: unclamped
    smoothing = rows(db, "SELECT iteration, stats->>'label_smoothing' FROM lineage ORDER BY 1")
    assert smoothing == [(1, "0.0"), (2, str(ls))]
    # anchored rejection: M1's samples of iteration 2's prompts; kept actor pairs reject one of them
    assert rows(db, "SELECT iteration, model_version, count(*) FROM anchor_responses GROUP BY ALL") == [
        (2, "M1", per * k)
    ]
    assert (
        rows(db, "SELECT count(*) FROM judgements WHERE source = 'anchor' AND model_version = 'M2'")[0][0]
        == per * k * n - n * rows(db, "SELECT count(*) FROM anchor_responses WHERE is_duplicate")[0][0]
    )
    kept = rows(
        db, "SELECT rejected_id, chosen_id FROM pairs WHERE iteration = 2 AND kind = 'actor' AND status = 'kept'"
    )
    assert kept and all(r.startswith("it2/") and "/a" in r and "/r" in ch for r, ch in kept)
    assert (
        rows(db, "SELECT count(*) FROM pairs WHERE iteration = 1 AND kind = 'actor' AND rejected_id LIKE '%/a%'")[0][0]
        == 0
    )
    models = [c[1] for c in policy.calls if c[0] == "generate"]
    assert models.index("M2") < max(i for i, m in enumerate(models) if m == models[0])  # M1 asked again in iteration 2
    # a finished run resumed does nothing more: anchors and re-judgements are not generated twice
    before = snapshot(db)
    resume(store.run_dir, ScriptedPolicy())
    assert snapshot(db) == before
    assert rows(db, "SELECT count(*) FROM anchor_responses")[0][0] == per * k


FUTURE = {**TINY["pairs"], "rejected_from": "initial", "chosen_from": "future"}


class CrashInFuture(ScriptedPolicy):
    """Dies three samples into the first temporary model's samples (iteration 1's future stage)."""

    def use(self, model_dir: str):
        if Path(model_dir).name == "F2" and self.crash_after is None:
            self.crash_after = self.samples + 3
        return super().use(model_dir)


def test_future_guided_chosen_in_the_loop(tmp_path):
    """issue 34 item 4, on the real stages and store (scripted model calls): each iteration trains a
    temporary next model F<t+1> on the anchored pairs (kind 'anchored', exactly the actor pairs of a run
    with anchored rejection alone), samples it, M_t judges the samples, and the final actor pairs take
    their chosen side from M_t's and F<t+1>'s samples together, never their rejected side; the final DPO
    trains on actor and judge pairs only; the temporary model is gone; a crash in its sampling resumes
    to the uninterrupted run."""
    for name in ("future", "alone", "crashed"):
        (tmp_path / name).mkdir()
    store, inputs = start(tmp_path / "future", pairs=FUTURE)
    policy = ScriptedPolicy()
    run(store, inputs, policy)
    db = store.run_dir / DB_NAME
    k, n, per = TINY["actor"]["k"], TINY["judge"]["n"], TINY["prompts"]["per_iteration"]
    assert rows(db, "SELECT status FROM runs") == [("success",)]
    assert rows(db, "SELECT iteration, list(stage ORDER BY stage) FROM stages GROUP BY 1 ORDER BY 1") == [
        (1, ["actor", "future", "judge", "meta_judge", "pairs", "train"]),
        (2, ["actor", "anchor", "future", "judge", "meta_judge", "pairs", "train"]),
    ]
    # the temporary models' samples, judged by M_t; the models themselves deleted
    assert rows(db, "SELECT iteration, model_version, count(*) FROM future_responses GROUP BY ALL ORDER BY 1") == [
        (1, "F2", per * k),
        (2, "F3", per * k),
    ]
    dups = dict(rows(db, "SELECT iteration, count(*) FILTER (WHERE is_duplicate) FROM future_responses GROUP BY 1"))
    assert rows(
        db, "SELECT iteration, model_version, count(*) FROM judgements WHERE source = 'future' GROUP BY ALL ORDER BY 1"
    ) == [(1, "M1", (per * k - dups[1]) * n), (2, "M2", (per * k - dups[2]) * n)]
    assert not list((store.run_dir / "models").glob("F*"))
    models = [c[1] for c in policy.calls if c[0] == "generate"]
    assert "F2" in models and "F3" in models
    control = [c[0] for c in policy.calls if c[0] not in ("generate",)]
    assert control == ["open"] + ["release", "resume"] * 4 + ["close"]  # two DPO runs an iteration
    # the anchored pairs are the actor pairs anchored rejection alone gives (same seeds, same rule)
    alone, alone_inputs = start(tmp_path / "alone", pairs={**TINY["pairs"], "rejected_from": "initial"})
    run(alone, alone_inputs, ScriptedPolicy())
    pair = "SELECT replace(pair_id, '/{0}/', '/'), status, reason, chosen_id, rejected_id FROM pairs WHERE iteration = 1 AND kind = '{0}' ORDER BY 1"
    assert rows(db, pair.format("anchored")) == rows(alone.run_dir / DB_NAME, pair.format("actor"))
    assert len(rows(db, pair.format("anchored"))) == per
    # the temporary model trained on the kept anchored pairs, its numbers recorded
    [(trained,)] = rows(
        db, "SELECT value FROM eval_results WHERE eval = 'future' AND iteration = 1 AND metric = 'pairs_trained'"
    )
    assert (
        trained
        == rows(db, "SELECT count(*) FROM pairs WHERE iteration = 1 AND kind = 'anchored' AND status = 'kept'")[0][0]
    )
    # final actor pairs: chosen from M_t's or F<t+1>'s samples, rejected never from F<t+1>
    final = rows(db, "SELECT iteration, chosen_id, rejected_id FROM pairs WHERE kind = 'actor' AND status = 'kept'")
    assert final and not any("/f" in rej for _, _, rej in final)
    ahead = [it for it, ch, _ in final if ch.rsplit("/", 1)[1].startswith("f")]
    assert ahead, "no pair took the temporary model's sample: the switch did nothing here"
    for it in (1, 2):
        [(share, n_kept)] = rows(
            db,
            f"SELECT value, n FROM eval_results WHERE eval = 'future' AND iteration = {it} AND metric = 'future_chosen_share'",
        )
        assert n_kept == sum(1 for i, _, _ in final if i == it) and share == pytest.approx(ahead.count(it) / n_kept)
    # the final DPO: actor and judge pairs only
    assert rows(db, "SELECT iteration, pairs_in FROM lineage ORDER BY 1") == rows(
        db,
        "SELECT iteration, count(*) FROM pairs WHERE status = 'kept' AND kind IN ('actor', 'judge') GROUP BY 1 ORDER BY 1",
    )
    # a crash in the temporary model's sampling: the resume equals the uninterrupted run, row for row
    crashed, crashed_inputs = start(tmp_path / "crashed", pairs=FUTURE)
    with pytest.raises(Crash):
        run(crashed, crashed_inputs, CrashInFuture())
    cdb = crashed.run_dir / DB_NAME
    assert rows(cdb, "SELECT iteration, stage FROM stages WHERE status = 'error'") == [(1, "future")]
    assert (crashed.run_dir / "models" / "F2").is_dir()
    resume(crashed.run_dir, ScriptedPolicy())
    future = "SELECT response_id, text, model_version, seed FROM future_responses"
    assert snapshot(cdb) == snapshot(db) and set(rows(cdb, future)) == set(rows(db, future))
    # a finished run resumed does nothing more
    before = snapshot(db)
    resume(store.run_dir, ScriptedPolicy())
    assert snapshot(db) == before and rows(db, "SELECT count(*) FROM future_responses")[0][0] == 2 * per * k


def test_a_switch_plugs_in_through_its_step_alone(tmp_path):
    """issue 35: a new switch is its step (the gate inside it) and an entry in Loop.STEPS; `_run` does
    not change. A stub switch placed after the judge stage acts from iteration 2 only: it sees the
    iteration's judgements, sets DPO's label smoothing, and that iteration's DPO trains with it; in
    iteration 1 it leaves the neutral value."""
    import inspect

    seen = []

    class Stubbed(Loop):
        def _step_stub(self, s):
            if s.it == 1:  # the gate: a switch that does not act returns at once
                return
            seen.append((s.it, len(s.judgements), [r["response_id"] for r in s.responses][:1]))
            s.smoothing = 0.25

        i = Loop.STEPS.index(Loop._step_judge)
        STEPS = (*Loop.STEPS[: i + 1], _step_stub, *Loop.STEPS[i + 1 :])

    store, inputs = start(tmp_path)
    Stubbed(store, inputs, open_policy=ScriptedPolicy().opener, train=scripted_train).run()
    db = store.run_dir / DB_NAME
    judged = rows(db, "SELECT count(*) FROM judgements WHERE source = 'loop' AND iteration = 2")[0][0]
    assert seen == [(2, judged, [rows(db, "SELECT min(response_id) FROM responses WHERE iteration = 2")[0][0]])]
    assert rows(db, "SELECT iteration, stats->>'label_smoothing' FROM lineage ORDER BY 1") == [(1, "0.0"), (2, "0.25")]
    assert len(inspect.getsource(Loop._run).splitlines()) <= 40  # the loop's headline: one line per step
