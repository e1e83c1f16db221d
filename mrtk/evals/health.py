"""Judge health while the loop runs: is M_t's judge getting better, or drifting?

Three views, each per iteration and each with a 95% interval (scipy's bootstrap, BCa, over
the units named below; seeded):
- the human probe (`probe.file`): M_t judges human-labelled pairs with the run's judge
  template and mode; agreement (a tie counts 0.5), agreement without ties, tie rate;
- the frozen set (`probe.frozen`): a fixed sample of iteration-1 responses re-judged by every
  later model, against iteration 1's own scores of them: mean-score shift (paired per
  response), top-score share (saturation), tie rate over same-prompt response pairs, and the
  score-length correlation. It separates "the responses got better" from "the judge got
  more lenient": the responses do not change;
- the change from one iteration to the next: the paired bootstrap of the difference (per
  probe pair, or per frozen response), and a verdict: better / worse when the interval
  excludes 0, else "no detectable change".
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats

from mrtk.ties import EVEN_SCORE

SEED = 0
# mrtk's rule: fewer paired units than this give a change but no interval and no verdict (a
# bootstrap over 2-3 units gives a zero-width interval; over a handful it under-covers badly).
MIN_PAIRED_UNITS = 10


class Estimate(NamedTuple):
    """One number with its 95% interval and the units it rests on: the shape every per-iteration
    estimate is stored in (`eval_results`: value, ci_low, ci_high, n). The truth numbers use it;
    the older probe, drift and consistency numbers still build the same 4-tuple by hand."""

    value: float | None
    lo: float | None
    hi: float | None
    n: int


def bootstrap_ci(values, statistic=np.mean, *, paired_with=None) -> tuple[float | None, float | None]:
    """95% interval of `statistic` over resampled units (BCa, 2,000 resamples, seeded);
    `paired_with`: a second array resampled with the same indices (statistic(x, y))."""
    data = (
        (np.asarray(values, float),)
        if paired_with is None
        else (np.asarray(values, float), np.asarray(paired_with, float))
    )
    n = len(data[0])
    if n < 3 or all(np.ptp(d) == 0 for d in data):  # no spread: the interval is the point itself (or undefined)
        point = float(statistic(*data)) if n else None
        return point, point
    for method in ("BCa", "percentile"):  # BCa degenerates (nan) on very skewed small samples: percentile then
        with warnings.catch_warnings():  # BCa on a degenerate resample warns, then gives nan
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                data,
                statistic,
                paired=paired_with is not None,
                vectorized=False,
                n_resamples=2000,
                confidence_level=0.95,
                method=method,
                random_state=np.random.default_rng(SEED),
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isnan(lo) or math.isnan(hi)):
            break
    return lo, hi


def correlation(x, y) -> tuple[float, float | None, float | None] | None:
    """Pearson's r of paired values with its bootstrap 95% interval; None below 3 pairs or without spread."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    r = lambda a, b: float(stats.pearsonr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else 0.0  # noqa: E731
    return (r(x, y), *bootstrap_ci(x, r, paired_with=y))


def paired_difference(now: list[float], before: list[float]) -> dict:
    """Mean of now - before over paired units, with its paired-bootstrap 95% interval and whether it
    contains 0. Below MIN_PAIRED_UNITS units there is no interval (None): a bootstrap over two or
    three units returns a zero-width interval that looks like certainty."""
    diff = np.asarray(now, float) - np.asarray(before, float)
    if len(diff) == 0:
        return {"diff": None, "ci_low": None, "ci_high": None, "n": 0, "contains_zero": True}
    if len(diff) < MIN_PAIRED_UNITS:
        return {"diff": float(diff.mean()), "ci_low": None, "ci_high": None, "n": int(len(diff)), "contains_zero": True}
    lo, hi = bootstrap_ci(now, lambda a, b: float(np.mean(a) - np.mean(b)), paired_with=before)
    return {
        "diff": float(diff.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "n": int(len(diff)),
        "contains_zero": lo is None or (lo <= 0.0 <= hi),
    }


def verdict(change: dict | None) -> str:
    """better / worse when the paired interval excludes 0; no verdict below MIN_PAIRED_UNITS units."""
    if not change or change["diff"] is None:
        return "no earlier iteration"
    if change["n"] < MIN_PAIRED_UNITS or change["ci_low"] is None:
        return f"too few pairs ({change['n']}; a verdict needs {MIN_PAIRED_UNITS})"
    if change["ci_low"] <= 0.0 <= change["ci_high"]:
        return "no detectable change"
    return "better" if change["diff"] > 0 else "worse"


def drift(
    base: dict[str, float], now: dict[str, float], lengths: dict[str, int], prompt_of: dict[str, str], top: float
) -> dict:
    """Frozen-set metrics of one iteration. base/now: response_id -> mean score (iteration 1 /
    this iteration's judge); `top`: the template's highest score."""
    ids = sorted(set(base) & set(now))
    b, n = np.array([base[i] for i in ids]), np.array([now[i] for i in ids])
    out: dict[str, tuple] = {}
    if not ids:
        return out
    out["mean_score"] = (float(n.mean()), *bootstrap_ci(n), len(ids))
    shift = paired_difference(list(n), list(b))
    out["mean_shift"] = (shift["diff"], shift["ci_low"], shift["ci_high"], shift["n"])
    is_top = (n >= top - 0.5).astype(float)
    out["top_score_share"] = (float(is_top.mean()), *bootstrap_ci(is_top), len(ids))
    pairs = [(i, j) for k, i in enumerate(ids) for j in ids[k + 1 :] if prompt_of[i] == prompt_of[j]]
    if pairs:
        ties = np.array([abs(now[i] - now[j]) < EVEN_SCORE for i, j in pairs], float)
        out["tie_rate"] = (float(ties.mean()), *bootstrap_ci(ties), len(pairs))
    r = correlation(n, [lengths[i] for i in ids])
    if r:
        out["score_length_r"] = (*r, len(ids))
    return out
