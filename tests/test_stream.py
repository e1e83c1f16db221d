"""mrtk/stream.py's executor on a real run database, with stage functions of our own (the loop's
flows against simulated servers are tests/test_serving.py's): follow-ups run as their parents
finish, every row lands, the stage rows overlap, and a failed call leaves its stage `error`."""

from __future__ import annotations

import time

import pytest

from mrtk.store import RunStore
from mrtk.stream import Flow, run_flows
from mrtk.ui import QuietUI


def _store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "run")
    store.migrate()
    return store


def _flows(fail: str | None = None, slow: str | None = None) -> list[Flow]:
    """Prompts -> 2 responses each -> 1 judgement of each response. `fail`: the judgement call of this
    response raises at once; `slow`: this one takes 0.3 s (it finishes after a failure)."""

    def answer(prompts, go):
        time.sleep(0.01)
        return [
            {
                "response_id": f"{p}/r{k}",
                "iteration": 1,
                "prompt_id": p,
                "text": f"answer {k} to {p}",
                "is_duplicate": False,
            }
            for p in prompts
            for k in range(2)
        ]

    def judge(responses, go):
        for r in responses:
            if r["response_id"] == fail:
                raise RuntimeError(f"server gone while judging {fail}")
            if r["response_id"] == slow:
                time.sleep(0.3)
        return [
            {
                "judgement_id": r["response_id"] + "/j0",
                "iteration": 1,
                "response_id": r["response_id"],
                "prompt_id": r["prompt_id"],
                "raw_text": "Score: 3",
                "text": "Score: 3",
            }
            for r in responses
        ]

    return [
        Flow("actor", "responses", 2, answer, lambda p: p, lambda items, rows: rows),
        Flow("judge", "judgements", 1, judge, lambda r: r["prompt_id"]),
    ]


def _stages(store: RunStore) -> dict:
    return {r["stage"]: r for r in store.fetch("SELECT * FROM stages WHERE iteration = 1")}


def test_follow_ups_run_as_their_parents_finish_and_every_row_lands(tmp_path):
    store = _store(tmp_path)
    prompts = [f"p{i:02d}" for i in range(40)]
    run_flows(store, QuietUI(), 1, "test", _flows(), [prompts, []], window=4)
    assert store.fetch("SELECT count(*) AS c FROM responses")[0]["c"] == 80
    assert store.fetch("SELECT count(DISTINCT judgement_id) AS c FROM judgements")[0]["c"] == 80
    s = _stages(store)
    assert s["actor"]["status"] == s["judge"]["status"] == "done"
    assert s["judge"]["started_at"] < s["actor"]["finished_at"] <= s["judge"]["finished_at"]  # they overlap


def test_a_failed_call_leaves_its_stage_error_while_the_others_rows_land(tmp_path):
    """A judge call fails while another is still running: that one's rows are written, and the judge
    stage ends `error`, never `done` (its failed items never finish), though nothing of it is left
    running when the last call returns."""
    store = _store(tmp_path)
    with pytest.raises(RuntimeError, match="server gone"):
        run_flows(store, QuietUI(), 1, "test", _flows(fail="p00/r1", slow="p00/r0"), [["p00"], []], window=8)
    assert [r["judgement_id"] for r in store.fetch("SELECT judgement_id FROM judgements")] == ["p00/r0/j0"]
    s = _stages(store)
    assert (s["actor"]["status"], s["judge"]["status"]) == ("done", "error")
    assert "server gone" in s["judge"]["error"]
