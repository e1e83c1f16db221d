"""Position weights, battle matrix, Bradley-Terry/Elo and the response pick (docs/METHOD.md section 4)."""

import numpy as np
import pytest

from mrtk.stages.meta_judge import (
    battle_matrix,
    battles,
    elo_ratings,
    fit_bradley_terry,
    pick_responses,
    position_weights,
    sample_verdict,
    shown,
    soft_preferences,
)


def meta(a, b, verdict, rid="r", p_a=None):
    return {
        "judgement_a": a,
        "judgement_b": b,
        "verdict": verdict,
        "response_id": rid,
        "prompt_id": "p",
        "iteration": 1,
        "p_a": p_a,
    }


def test_position_weights_hand_computed():
    rows = [meta("x", "y", "A"), meta("y", "x", "A"), meta("x", "z", "A"), meta("z", "x", "B")]
    # 3 first-position wins, 1 second-position win: w1 = 1/4, w2 = 3/4
    assert position_weights(rows, "iteration")["*"] == (0.25, 0.75)
    assert position_weights(rows, "none")["anything"] == (1.0, 1.0)
    per = position_weights(rows + [meta("u", "v", "B", rid="s")], "response")
    assert per["r"] == (0.25, 0.75) and per["s"] == (1.0, 0.0)


def test_unparsed_verdicts_do_not_count():
    rows = [meta("x", "y", "A"), meta("y", "x", None), meta("x", "y", "B")]
    assert position_weights(rows, "iteration")["*"] == (0.5, 0.5)


def test_battle_matrix():
    rows = [meta("x", "y", "A"), meta("y", "x", "B"), meta("x", "z", "B")]
    mat = battle_matrix(rows, ["x", "y", "z"], 0.25, 0.75)
    # x beat y as A (0.25) and as B (0.75); z beat x as B (0.75)
    assert mat.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.75, 0.0, 0.0]]


def test_bradley_terry_orders_by_wins_and_stays_finite():
    # x beats y and z; y beats z: a clean sweep, whose unregularised optimum diverges
    mat = np.array([[0, 2, 2], [0, 0, 2], [0, 0, 0]], dtype=float)
    e = fit_bradley_terry(mat, l2=0.01)
    assert e[0] > e[1] > e[2]
    assert np.all(np.isfinite(e)) and np.abs(e).max() < 50
    # stronger regularisation pulls the strengths together
    assert np.ptp(fit_bradley_terry(mat, l2=1.0)) < np.ptp(e)


def test_bradley_terry_two_player_closed_form():
    # one battle, x beats y with weight 1, l2 = 1: maximise log sig(d) - (ex^2+ey^2)/2 with ex = -ey = d/2
    e = fit_bradley_terry(np.array([[0, 1.0], [0, 0]]), l2=1.0)
    d = e[0] - e[1]
    # stationarity: (1 - sig(d)) = d/2
    assert (1 - 1 / (1 + np.exp(-d))) == pytest.approx(d / 2, abs=1e-8)


def test_elo_ratings_rows():
    js = [
        {"judgement_id": j, "response_id": "r", "score": s}
        for j, s in [("x", 4.0), ("y", 3.0), ("z", 2.0), ("bad", None)]
    ]
    rows = [
        meta("x", "y", "A"),
        meta("y", "x", "B"),
        meta("x", "z", "A"),
        meta("z", "x", "B"),
        meta("y", "z", "A"),
        meta("z", "y", "B"),
    ]
    out = {r["judgement_id"]: r["elo"] for r in elo_ratings(rows, js, "none", 0.01)}
    assert set(out) == {"x", "y", "z"}  # the unparsed judgement takes no part
    assert out["x"] > out["y"] > out["z"]
    assert sum(out.values()) / 3 == pytest.approx(1000.0, abs=1e-6)


def test_pick_highest_variance_response():
    responses = [{"response_id": r, "prompt_id": "p", "is_duplicate": False} for r in ("a", "b", "c")]
    js = (
        [{"response_id": "a", "score": s} for s in (3.0, 3.0, 3.0)]
        + [{"response_id": "b", "score": s} for s in (1.0, 5.0, None)]
        + [{"response_id": "c", "score": s} for s in (2.0, 4.0, 3.0)]
    )
    assert pick_responses(responses, js, run_seed=0, iteration=1) == {"p": ("b", "ok")}
    flat = [{"response_id": "a", "score": 3.0}, {"response_id": "a", "score": 3.0}]
    assert pick_responses(responses[:1], flat, run_seed=0, iteration=1) == {
        "p": (None, "no_response_with_score_variance")
    }


def test_battles_both_orders_valid_only():
    js = [{"judgement_id": j, "score": s} for j, s in [("a", 1.0), ("b", 2.0), ("c", None), ("d", 3.0)]]
    fights = [(x["judgement_id"], y["judgement_id"]) for x, y in battles(js)]
    assert len(fights) == 6 and ("a", "b") in fights and ("b", "a") in fights
    assert all("c" not in f for f in fights)


def test_sample_verdict():
    assert sample_verdict({"A": 0.3, "B": 0.1}, 0.0, 1).value == "A"
    assert sample_verdict({"A": 0.0, "B": 0.0}, 0.8, 1).reason == "no_mass_on_verdict_tokens"
    draws = [sample_verdict({"A": 0.5, "B": 0.5}, 1.0, s).value for s in range(200)]
    assert 60 < draws.count("A") < 140
    assert sample_verdict({"A": 0.5, "B": 0.5}, 1.0, 42) == sample_verdict({"A": 0.5, "B": 0.5}, 1.0, 42)


def test_hidden_scores():
    j = {"text": "Fine answer.\nScore: 4.25"}
    assert shown(j, True).endswith("Score: 4.25")
    assert "Score" not in shown(j, False)


def test_pick_without_require_variance_is_the_papers_random_tie_break():
    """The paper picks the highest-variance response and breaks ties at random; zero variance is
    not excluded (NeMo's rule, `require_variance`). Saturated scores (iteration 2 in the paper)
    still give a pick: a seeded draw among the tied responses, spread over both."""
    by_response = [
        {"response_id": f"{p}/{r}", "prompt_id": p, "is_duplicate": False}
        for p in ("p0", "p1", "p2", "p3", "p4", "p5")
        for r in ("a", "b")
    ]
    js = [
        {"response_id": r["response_id"], "score": 5.0} for r in by_response for _ in range(3)
    ]  # all 5: zero variance
    assert set(pick_responses(by_response, js, run_seed=0, iteration=2).values()) == {
        (None, "no_response_with_score_variance")
    }
    picks = pick_responses(by_response, js, run_seed=0, iteration=2, require_variance=False)
    assert all(why == "ok" and rid.startswith(pid + "/") for pid, (rid, why) in picks.items())
    assert {rid.split("/")[1] for rid, _ in picks.values()} == {"a", "b"}  # random, not always the first id
    assert picks == pick_responses(by_response, js, run_seed=0, iteration=2, require_variance=False)  # seeded
    one = [{"response_id": "p0/a", "score": 5.0}]  # fewer than two valid scores: no pick under either rule
    assert pick_responses(by_response[:1], one, run_seed=0, iteration=2, require_variance=False) == {
        "p0": (None, "no_response_with_2_valid_scores")
    }


def test_soft_verdicts_cancel_a_first_position_preference_and_keep_a_real_one():
    """issue 25: p(A) = 0.9 in both orders is a tie (0.5) between the two judgements, not a win
    for either; 0.9 for x when x is first and 0.1 for y when y is first is 0.9 for x."""
    js = [{"judgement_id": j, "response_id": "r", "score": 3.0} for j in ("x", "y")]
    biased = [meta("x", "y", "A", p_a=0.9), meta("y", "x", "A", p_a=0.9)]
    assert soft_preferences(biased) == {("x", "y"): (pytest.approx(0.5), 2)}
    elo = {r["judgement_id"]: r["elo"] for r in elo_ratings(biased, js, "iteration", 0.01, "soft")}
    assert elo["x"] == pytest.approx(elo["y"], abs=1e-9)  # a tie: no judge pair would come of it
    hard = {r["judgement_id"]: r["elo"] for r in elo_ratings(biased, js, "none", 0.01)}
    assert hard["x"] == pytest.approx(hard["y"])  # hard verdicts with no weights: one win each, also even here...
    one_sided = [meta("x", "y", "A", p_a=0.9), meta("y", "x", "A", p_a=0.9), meta("x", "y", "A", p_a=0.9)]
    assert soft_preferences(one_sided)[("x", "y")][0] == pytest.approx(
        (0.9 + 0.1 + 0.9) / 3
    )  # ...but the soft mean keeps counting
    real = [meta("x", "y", "A", p_a=0.9), meta("y", "x", "B", p_a=0.1)]
    assert soft_preferences(real) == {("x", "y"): (pytest.approx(0.9), 2)}
    elo = {r["judgement_id"]: r for r in elo_ratings(real, js, "iteration", 0.01, "soft")}
    assert elo["x"]["elo"] > elo["y"]["elo"] and elo["x"]["weighted_wins"] == pytest.approx(1.8)
    assert (elo["x"]["w1"], elo["x"]["w2"]) == (1.0, 1.0)


def test_soft_verdicts_are_fractional_wins_in_the_fit():
    """Three judgements: the soft matrix holds 2 x the order-averaged probability per pair, and
    a battle without p(A) (an unparsed structured answer) adds nothing."""
    from mrtk.stages.meta_judge import soft_matrix

    rows = [
        meta("x", "y", "A", p_a=0.8),
        meta("y", "x", "B", p_a=0.4),
        meta("x", "z", "A", p_a=0.6),
        meta("z", "x", None),
    ]
    mat = soft_matrix(rows, ["x", "y", "z"])
    assert mat[0, 1] == pytest.approx(2 * 0.7) and mat[1, 0] == pytest.approx(2 * 0.3)
    assert mat[0, 2] == pytest.approx(0.6) and mat[2, 0] == pytest.approx(0.4)
    assert mat[1, 2] == mat[2, 1] == 0.0


def test_the_pairwise_judge_soft_verdict_is_the_same_reading():
    """issue 25 for the pairwise judge template (`mrtk eval judge --verdict soft`): p(A) = 0.9 in both
    orders of two answers is a tie; 0.9 with a first and 0.1 with b first is a win for a; hard
    verdicts (one A each way) read the first as a tie as well, the second case the same way."""
    from mrtk.config import validate_config
    from mrtk.prompts import load_template
    from mrtk.stages.judge import Judging

    template = load_template("judge_pairwise", role="pairwise-judge")
    cfg = validate_config({}).judge

    def said(p, p_ab, v_ab, p_ba, v_ba):
        return [
            {"prompt_id": p, "unit": f"{p}#a|{p}#b", "verdict": v_ab, "p_a": p_ab, "score": None},
            {"prompt_id": p, "unit": f"{p}#b|{p}#a", "verdict": v_ba, "p_a": p_ba, "score": None},
        ]

    rows = said("biased", 0.9, "A", 0.9, "A") + said("real", 0.9, "A", 0.1, "B") + said("leaning", 0.9, "A", 0.8, "A")
    soft, consistency = Judging(template, cfg.model_copy(update={"verdict": "soft"})).preferences(rows)
    hard, _ = Judging(template, cfg).preferences(rows)
    assert soft == {"biased": None, "real": "a", "leaning": "a"}  # leaning: (0.9 + 0.2) / 2 = 0.55
    assert hard == {"biased": None, "real": "a", "leaning": None}  # hard: one vote each way for leaning
    assert consistency == (pytest.approx(1 / 3), None, None, 3)  # only `real` keeps its winner across the swap
