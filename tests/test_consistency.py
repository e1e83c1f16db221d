"""CREAM's ranking consistency and the label smoothing it gives DPO (train.consistency: avg, issue 25)."""

import pytest

from mrtk.stages.consistency import kendall_tau_b, label_smoothing, prompt_consistency, summary


def test_kendall_tau_b_hand_computed():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    # one swap of four: 5 concordant, 1 discordant -> 4/6
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # a tie in x: pairs (1,2) tied in x only; tau_b = (C - D) / sqrt((C+D+Tx)(C+D+Ty)) = (5 - 0) / sqrt(6 * 5)
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / (6 * 5) ** 0.5)
    assert kendall_tau_b([2, 2, 2], [1, 2, 3]) is None  # a constant ranking ranks nothing


def test_identical_rankings_give_no_smoothing_and_reversed_ones_the_clamp():
    """issue 25's hand case: two identical rankings -> label_smoothing 0; two reversed -> 1 - 0 = 1,
    clamped to 0.5."""
    prompt_of = {"r0": "p", "r1": "p", "r2": "p", "s0": "q", "s1": "q"}
    now = {"r0": 4.0, "r1": 3.0, "r2": 1.0, "s0": 2.0, "s1": 5.0}
    same = prompt_consistency(now, dict(now), prompt_of)
    assert same == {"p": 1.0, "q": 1.0} and label_smoothing(list(same.values())) == 0.0
    reversed_ = prompt_consistency(now, {k: -v for k, v in now.items()}, prompt_of)
    assert reversed_ == {"p": 0.0, "q": 0.0} and label_smoothing(list(reversed_.values())) == 0.5
    half = prompt_consistency(now, {"r0": 4.0, "r1": 3.0, "r2": 1.0, "s0": 5.0, "s1": 2.0}, prompt_of)
    assert label_smoothing(list(half.values())) == pytest.approx(0.5)  # mean c = (1 + 0) / 2
    assert label_smoothing([]) == 0.0


def test_prompts_without_two_ranked_responses_are_left_out():
    prompt_of = {"r0": "p", "r1": "p", "t0": "t", "u0": "u", "u1": "u"}
    now = {"r0": 1.0, "r1": 2.0, "t0": 3.0, "u0": 2.0, "u1": 2.0}
    before = {"r0": 1.0, "r1": 3.0, "t0": 1.0, "u0": 1.0, "u1": 4.0}
    assert prompt_consistency(now, before, prompt_of) == {"p": 1.0}  # t: one response; u: M_t ties them
    numbers = summary({"p": 1.0, "q": 0.5})
    mean, lo, hi, n = numbers["consistency"]
    assert (mean, n) == (0.75, 2) and lo < mean < hi and numbers["label_smoothing"] == (0.25, None, None, 2)
