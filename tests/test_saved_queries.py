"""Every saved query (`mrtk query @name`) on a small hand-built database, against rows computed by hand.

The fixture (iteration 1 unless said otherwise):
    responses r0..r3 with 10, 20, 30, 40 characters; r4 (iteration 2) with 50.
    judgements (template j5, structured, loop): r0 1.0, r1 2.0, r2 2.4, r3 4.0, r3 unparsed
    (no_mass_on_score_tokens); iteration 2: r4 3.0. Re-judge (template j10, rejudge): r0 7.0.
    meta-judgements: (ja 1.0 vs jb 2.0) A; (jb vs ja) A; (jc 2.4 vs jd 4.0) B; (ja vs jc) unparsed.
    pairwise judgements: (r0, r1) B; (r1, r0) A.
    pairs: it1 actor kept ok, it1 judge dropped no_elo_spread, it2 actor dropped all_scores_tied,
    it2 judge dropped no_elo_spread.
"""

from __future__ import annotations

import pytest

from mrtk.errors import MrtkError
from mrtk.store import RunStore
from mrtk.store.db import DB_NAME
from mrtk.store.query import run_query
from mrtk.store.saved import resolve_saved, saved_queries


def _j(jid, rid, score, it=1, template="j5", source="loop", reason=None):
    return {
        "judgement_id": jid,
        "iteration": it,
        "response_id": rid,
        "prompt_id": "p1" if it == 1 else "p2",
        "raw_text": "x",
        "score": score,
        "parse_status": "ok" if score is not None else "failed",
        "parse_reason": reason,
        "score_mode": "structured",
        "template": template,
        "template_hash": template,
        "model_version": f"M{it}",
        "source": source,
    }


def _m(mid, a, b, verdict, reason=None):
    return {
        "meta_id": mid,
        "iteration": 1,
        "prompt_id": "p1",
        "response_id": "r?",
        "judgement_a": a,
        "judgement_b": b,
        "raw_text": "x",
        "verdict": verdict,
        "parse_status": "ok" if verdict else "failed",
        "parse_reason": reason,
        "template": "mj",
    }


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("fixture"))
    store.migrate()
    store.write(
        "responses",
        [
            {
                "response_id": f"r{i}",
                "iteration": 1 if i < 4 else 2,
                "prompt_id": "p1" if i < 4 else "p2",
                "n_chars": 10 * (i + 1),
                "is_duplicate": False,
            }
            for i in range(5)
        ],
    )
    store.write(
        "judgements",
        [
            _j("ja", "r0", 1.0),
            _j("jb", "r1", 2.0),
            _j("jc", "r2", 2.4),
            _j("jd", "r3", 4.0),
            _j("jx", "r3", None, reason="no_mass_on_score_tokens"),
            _j("jf", "r4", 3.0, it=2),
            _j("jz", "r0", 7.0, template="j10", source="rejudge"),
        ],
    )
    store.write(
        "meta_judgements",
        [
            _m("m1", "ja", "jb", "A"),
            _m("m2", "jb", "ja", "A"),
            _m("m3", "jc", "jd", "B"),
            _m("m4", "ja", "jc", None, "no_verdict_line"),
        ],
    )
    store.write(
        "pairwise_judgements",
        [
            {
                "judgement_id": "w1",
                "iteration": 1,
                "prompt_id": "p1",
                "response_a": "r0",
                "response_b": "r1",
                "raw_text": "x",
                "verdict": "B",
                "winner": "r1",
                "parse_status": "ok",
                "template": "pw",
            },
            {
                "judgement_id": "w2",
                "iteration": 1,
                "prompt_id": "p1",
                "response_a": "r1",
                "response_b": "r0",
                "raw_text": "x",
                "verdict": "A",
                "winner": "r1",
                "parse_status": "ok",
                "template": "pw",
            },
        ],
    )
    store.write(
        "pairs",
        [
            {"pair_id": "a1", "iteration": 1, "kind": "actor", "status": "kept", "reason": "ok"},
            {"pair_id": "j1", "iteration": 1, "kind": "judge", "status": "dropped", "reason": "no_elo_spread"},
            {"pair_id": "a2", "iteration": 2, "kind": "actor", "status": "dropped", "reason": "all_scores_tied"},
            {"pair_id": "j2", "iteration": 2, "kind": "judge", "status": "dropped", "reason": "no_elo_spread"},
        ],
    )
    return store.path


def saved(db, name, **params):
    sql, values = resolve_saved(name, {k: str(v) for k, v in params.items()})
    cols, rows = run_query(db, sql, values)
    return [dict(zip(cols, r)) for r in rows]


def test_every_saved_query_has_a_test_here():
    tested = {
        "score_hist",
        "position_bias",
        "position_bias_split",
        "score_bias",
        "length_bias",
        "parse_failures",
        "pair_reasons",
        "truth",
    }
    assert set(saved_queries()) == tested
    assert all(q.description for q in saved_queries().values())


def test_score_hist(db):
    rows = saved(db, "score_hist", iteration=1, template="j5")
    assert [(r["score"], r["n"], r["share"]) for r in rows] == [(1, 1, 0.25), (2, 2, 0.5), (4, 1, 0.25)]
    assert {r["template"] for r in saved(db, "score_hist", iteration=1)} == {"j5", "j10"}
    assert [(r["iteration"], r["score"]) for r in saved(db, "score_hist", template="j5")][-1] == (2, 3)


def test_position_bias(db):
    rows = saved(db, "position_bias")
    assert [(r["judge"], r["verdicts"], r["first_position_wins"], r["first_position_share"]) for r in rows] == [
        ("meta_judge", 3, 2, round(2 / 3, 4)),
        ("pairwise", 2, 1, 0.5),
    ]
    assert saved(db, "position_bias", iteration=2) == []


def test_position_bias_split_by_score(tmp_path):
    """Table 5 of the paper: first-position wins among same-score and different-score battles."""
    store = RunStore(tmp_path)
    store.migrate()
    store.write("judgements", [_j("ja", "r0", 1.0), _j("jb", "r0", 2.0), _j("jc", "r0", 2.0)])
    store.write(
        "meta_judgements",
        [_m("m1", "ja", "jb", "A"), _m("m2", "jb", "ja", "A"), _m("m3", "jb", "jc", "A"), _m("m4", "jc", "jb", "B")],
    )
    rows = saved(store.path, "position_bias_split")
    assert [
        (r["judgement_scores"], r["verdicts"], r["first_position_wins"], r["first_position_share"]) for r in rows
    ] == [("same score", 2, 1, 0.5), ("different score", 2, 2, 1.0)]


def test_score_bias(db):
    # m1: higher (jb) lost; m2: higher (jb, in position A) won; m3: higher (jd, in B) won; m4 unparsed.
    [row] = saved(db, "score_bias")
    assert (row["battles_with_score_gap"], row["higher_score_wins"], row["higher_score_win_share"]) == (
        3,
        2,
        round(2 / 3, 4),
    )


def test_length_bias(db):
    rows = {(r["iteration"], r["template"]): r for r in saved(db, "length_bias")}
    r = rows[(1, "j5")]
    # scores 1, 2, 2.4, 4 at 10, 20, 30, 40 chars: means 2.35 and 25; sxy = 20.25+1.75+0.25+24.75 = 47,
    # sxx = 1.8225+0.1225+0.0025+2.7225 = 4.67, syy = 500 -> r = 47 / sqrt(2335) = 0.97264.
    # Median 25: short (1, 2) mean 1.5, long (2.4, 4) mean 3.2.
    assert r["judgements"] == 4
    assert r["score_length_corr"] == pytest.approx(0.9726, abs=1e-4)
    assert (r["mean_score_short"], r["mean_score_long"]) == (1.5, 3.2)
    assert rows[(2, "j5")]["score_length_corr"] is None  # one judgement: no correlation


def test_parse_failures(db):
    rows = saved(db, "parse_failures")
    assert [(r["table"], r["reason"], r["n"], r["total"], r["share"]) for r in rows] == [
        ("judgements", "no_mass_on_score_tokens", 1, 5, 0.2),
        ("meta_judgements", "no_verdict_line", 1, 4, 0.25),
    ]


def test_pair_reasons(db):
    assert [
        (r["iteration"], r["kind"], r["status"], r["reason"], r["n"]) for r in saved(db, "pair_reasons", kind="judge")
    ] == [(1, "judge", "dropped", "no_elo_spread", 1), (2, "judge", "dropped", "no_elo_spread", 1)]
    assert [(r["kind"], r["status"]) for r in saved(db, "pair_reasons", iteration=1)] == [
        ("actor", "kept"),
        ("judge", "dropped"),
    ]


def test_unknown_saved_query_and_parameter_are_one_line_errors(db):
    with pytest.raises(MrtkError, match=r"no saved query @nope; saved queries: .*@position_bias"):
        resolve_saved("nope", {})
    with pytest.raises(MrtkError, match=r"@pair_reasons takes no parameter 'x'; it takes: iteration, kind"):
        resolve_saved("pair_reasons", {"x": "1"})


def test_saved_query_through_the_cli(db):
    from conftest import mrtk

    res = mrtk(
        "query",
        "@position_bias",
        "-p",
        "iteration=1",
        "--run",
        str(db.parent),
        "--format",
        "csv",
        cwd=db.parent,
        check=True,
    )
    assert res.stdout.splitlines()[1:] == ["1,meta_judge,mj,3,2,0.6667", "1,pairwise,pw,2,1,0.5"]
    assert DB_NAME == db.name


def test_truth(tmp_path):
    """The truth numbers as record_numbers stores them, read back by iteration, rounded to 4 places."""
    store = RunStore(tmp_path)
    store.migrate()
    store.record_numbers("truth", 1, "judge_additive5", {"judge_accuracy": (0.75, 0.5, 1.0, 2)}, {})
    store.record_numbers("truth", 2, "judge_additive5", {"actor_strict": (1 / 3, 0.123456, 0.6, 12)}, {})
    store.record_numbers("probe:x", 2, "j", {"agreement": (0.5, 0.4, 0.6, 10)}, {})  # another eval: not shown
    db = tmp_path / DB_NAME
    assert saved(db, "truth", iteration=2) == [
        {
            "iteration": 2,
            "judge": "judge_additive5",
            "metric": "actor_strict",
            "value": 0.3333,
            "ci_low": 0.1235,
            "ci_high": 0.6,
            "n": 12,
        }
    ]
    assert [r["metric"] for r in saved(db, "truth")] == ["judge_accuracy", "actor_strict"]
