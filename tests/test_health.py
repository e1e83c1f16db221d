"""Judge-health statistics on hand-built data: the frozen-set metrics and the paired bootstrap."""

import math

import pytest

from mrtk.evals import health


def test_frozen_set_metrics_by_hand():
    base = {"r1": 2.0, "r2": 3.0, "r3": 1.0, "r4": 4.0}
    now = {"r1": 3.0, "r2": 4.0, "r3": 2.0, "r4": 5.0}  # every response judged exactly one point higher
    out = health.drift(
        base, now, {"r1": 10, "r2": 20, "r3": 30, "r4": 40}, {"r1": "p1", "r2": "p1", "r3": "p2", "r4": "p2"}, 5.0
    )
    assert out["mean_shift"][:3] == (1.0, None, None)  # four responses: the shift, but too few for an interval
    assert out["top_score_share"][0] == 0.25  # only r4 is at or above 4.5
    assert out["tie_rate"][0] == 0.0 and out["tie_rate"][3] == 2  # two same-prompt pairs, none within 0.1
    # Pearson of (3, 4, 2, 5) with (10, 20, 30, 40): sum dx*dy = 20, sxx = 5, syy = 500 -> 20 / 50 = 0.4
    assert out["score_length_r"][0] == pytest.approx(0.4)
    lo, hi = out["score_length_r"][1:3]
    assert lo <= 0.4 <= hi


def test_ties_and_saturation():
    base = {f"r{i}": 3.0 for i in range(6)}
    now = {f"r{i}": 4.9 if i < 4 else 4.95 for i in range(6)}  # a judge that learned to say "5"
    out = health.drift(base, now, {k: 100 + i for i, k in enumerate(now)}, {k: "p" for k in now}, 5.0)
    assert out["top_score_share"][0] == 1.0 and out["tie_rate"][0] == 1.0  # 15 pairs, all within 0.1
    assert out["mean_shift"][0] == pytest.approx(1.9 + 0.05 * 2 / 6)


def test_paired_bootstrap_interval_excludes_zero_for_a_clear_gain():
    before = [0.0, 0.5, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.5, 0.0] * 3
    now = [1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 0.5] * 3
    change = health.paired_difference(now, before)
    assert change["diff"] == pytest.approx(sum(now) / 30 - sum(before) / 30)
    assert change["ci_low"] > 0 and not change["contains_zero"] and health.verdict(change) == "better"
    assert health.verdict(health.paired_difference(before, now)) == "worse"


def test_paired_bootstrap_interval_contains_zero_for_noise():
    before = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5] * 2
    now = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.5] * 2  # as many pairs gained as lost
    change = health.paired_difference(now, before)
    assert change["diff"] == 0.0 and change["ci_low"] < 0 < change["ci_high"]
    assert change["contains_zero"] and health.verdict(change) == "no detectable change"
    assert health.verdict(None) == "no earlier iteration"


@pytest.mark.parametrize(
    "now, before",
    [
        ([1.0, 1.0], [0.0, 0.0]),  # two units, no spread in either arm
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]),  # three
        ([1.0, 0.5, 1.0, 1.0, 0.5, 1.0], [0.0, 0.0, 0.5, 0.0, 0.0, 0.0]),  # a handful with spread
    ],
)
def test_too_few_paired_units_give_no_verdict(now, before):
    """Below the minimum the change is reported without an interval, and no better/worse verdict
    (before: a zero-width interval at the point and "better")."""
    change = health.paired_difference(now, before)
    assert change["diff"] == pytest.approx(sum(now) / len(now) - sum(before) / len(before)) and change["n"] == len(now)
    assert (change["ci_low"], change["ci_high"]) == (None, None)
    assert health.verdict(change) == f"too few pairs ({len(now)}; a verdict needs {health.MIN_PAIRED_UNITS})"


def test_bootstrap_is_scipys_and_seeded():
    from scipy import stats
    import numpy as np

    x = [0.1, 0.4, 0.35, 0.8, 0.55, 0.2, 0.9, 0.6]
    lo, hi = health.bootstrap_ci(x)
    ref = stats.bootstrap(
        (np.array(x),),
        np.mean,
        vectorized=False,
        n_resamples=2000,
        method="BCa",
        random_state=np.random.default_rng(health.SEED),
    ).confidence_interval
    assert (lo, hi) == (pytest.approx(ref.low), pytest.approx(ref.high)) and not math.isnan(lo)
