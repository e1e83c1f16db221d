"""Evaluation statistics, pure functions over plain numbers.

- AlpacaEval 2 win rate and standard error: a preference p in [0, 1] per instruction (the
  probability that the policy's output beats the reference; 0.5 is a draw); win rate is
  100 * mean(p), its standard error 100 * the standard error of the mean (ddof 1), as the
  AlpacaEval leaderboard computes them.
- Length-controlled win rate: AlpacaEval's GLM idea (Dubois et al. 2024): fit
  logit p = b + w * tanh(delta / sd(delta)), delta = len(policy) - len(reference) in
  characters, by L2-regularised logistic regression on the soft preferences, then predict
  with delta = 0: LC = 100 * sigmoid(b). AlpacaEval adds a per-instruction difficulty term
  fitted on its whole leaderboard, which a single run cannot fit; so this LC is close to, not
  identical with, the leaderboard's.
- Bradley-Terry score against a baseline with a bootstrap interval (Arena-Hard).
- Agreement with human labels with a Wilson 95% interval; Spearman rank correlation.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict


def win_rate(prefs: list[float]) -> dict:
    """prefs: P(policy beats the reference) per instruction, each in [0, 1]."""
    n = len(prefs)
    if n == 0:
        return {"win_rate": None, "standard_error": None, "n_total": 0, "n_wins": 0, "n_wins_base": 0, "n_draws": 0}
    mean = sum(prefs) / n
    var = sum((p - mean) ** 2 for p in prefs) / (n - 1) if n > 1 else 0.0
    return {
        "win_rate": 100.0 * mean,
        "standard_error": 100.0 * math.sqrt(var / n),
        "n_total": n,
        "n_wins": sum(p > 0.5 for p in prefs),
        "n_wins_base": sum(p < 0.5 for p in prefs),
        "n_draws": sum(p == 0.5 for p in prefs),
    }


def length_controlled_win_rate(
    prefs: list[float], policy_chars: list[int], reference_chars: list[int], l2: float = 1e-3
) -> float | None:
    n = len(prefs)
    if n < 2:
        return None
    delta = [a - b for a, b in zip(policy_chars, reference_chars)]
    mean = sum(delta) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in delta) / (n - 1))
    x = [math.tanh(d / sd) if sd > 0 else 0.0 for d in delta]
    b, w = _logistic_fit(x, prefs, l2)
    return 100.0 * _sigmoid(b)


def _logistic_fit(x: list[float], y: list[float], l2: float, steps: int = 50) -> tuple[float, float]:
    """Newton's method for logit P(y) = b + w x with soft labels y in [0, 1] and an L2 term on w."""
    b = w = 0.0
    n = len(x)
    for _ in range(steps):
        gb = gw = hbb = hbw = hww = 0.0
        for xi, yi in zip(x, y):
            p = _sigmoid(b + w * xi)
            r, s = p - yi, p * (1 - p)
            gb += r
            gw += r * xi
            hbb += s
            hbw += s * xi
            hww += s * xi * xi
        gw += l2 * n * w
        hww += l2 * n
        hbb += 1e-12
        det = hbb * hww - hbw * hbw
        if det <= 0:
            break
        db, dw = (hww * gb - hbw * gw) / det, (hbb * gw - hbw * gb) / det
        b, w = b - db, w - dw
        if abs(db) + abs(dw) < 1e-10:
            break
    return b, w


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def bt_score(prefs: list[float], *, bootstrap: int = 200, seed: int = 0) -> dict:
    """Arena-Hard style score: with one opponent (the baseline) the Bradley-Terry MLE of the
    policy's strength gives P(policy beats baseline) = mean preference; reported as a
    percentage with a bootstrap 95% interval over questions."""
    if not prefs:
        return {"score": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = random.Random(seed)
    n = len(prefs)
    boots = sorted(100.0 * sum(prefs[rng.randrange(n)] for _ in range(n)) / n for _ in range(bootstrap))
    return {
        "score": 100.0 * sum(prefs) / n,
        "ci_low": boots[int(0.025 * bootstrap)],
        "ci_high": boots[int(0.975 * bootstrap) - 1],
        "n": n,
    }


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)  # rounding can leave -0.000 at k = 0


def ranks(values: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(xs: list[float], ys: list[float], min_n: int = 3) -> float | None:
    """Pearson correlation; None under `min_n` points or when either side is constant."""
    n = len(xs)
    if n < min_n:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def spearman(a: list[float], b: list[float]) -> float | None:
    return pearson(ranks(a), ranks(b), min_n=2)


def agreement(labels: list[str], predictions: list[str | None]) -> dict:
    """labels and predictions 'a' / 'b'; a prediction of None is a tie (the judge could not
    separate the two). As the paper defines it (Table 3, Table 7), agreement counts a tie as half
    a hit; agreement_without_ties drops the tied pairs; tie_rate is their share."""
    n = len(labels)
    hits = sum(p == lab for lab, p in zip(labels, predictions))
    ties = sum(p is None for p in predictions)
    credit = hits + 0.5 * ties
    lo, hi = wilson(credit, n)
    lo2, hi2 = wilson(hits, n - ties)
    return {
        "agreement": credit / n if n else None,
        "ci_low": lo,
        "ci_high": hi,
        "n": n,
        "ties": ties,
        "tie_rate": ties / n if n else None,
        "agreement_without_ties": hits / (n - ties) if n - ties else None,
        "ci_low_without_ties": lo2,
        "ci_high_without_ties": hi2,
    }


def group_mean(rows: list[tuple[str, float]]) -> dict[str, float]:
    acc: dict[str, list[float]] = defaultdict(list)
    for k, v in rows:
        acc[k].append(v)
    return {k: sum(v) / len(v) for k, v in acc.items()}
