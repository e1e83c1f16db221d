"""Consistency-regularised DPO (`train.consistency`; CREAM, arXiv 2410.12735; docs/METHOD.md 8).

From iteration 2 on, the previous model M_{t-1}'s judge re-scores M_t's responses (the loop's
"consistency" stage: judgement rows with source 'consistency', keyed by M_{t-1}). Per prompt, the
consistency c is Kendall's tau between the two rankings of its responses (M_t's mean scores,
M_{t-1}'s), scaled to [0, 1]: c = (tau + 1) / 2. `train.consistency_ties` says how tied scores rank:
`ordinal` (CREAM's code, Raibows/CREAM cal_consistency.py: `rankdata(score, method='ordinal')` on both
lists, ties broken by position, then `kendalltau` of the ranks; a constant list still ranks) or `tau_b`
(mrtk's earlier rule: ties kept, a constant list left out). `avg` trains with label smoothing
e = 1 - mean(c), which is CREAM's c * L(chosen, rejected) + (1 - c) * L(rejected, chosen) with the
mean c, for any c (CREAM's code); `train.consistency_clamp` keeps e in [0, 0.5] instead (above 0.5
the loss prefers the rejected side).

CREAM ranks with the DPO implicit reward of each model; mrtk ranks with its own judge's scores,
the signal the pairs were built from (a named deviation).
"""

from __future__ import annotations

import math
from collections import defaultdict


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b of two score lists over the same items (ties in either list allowed); None
    when either list is constant (no ranking to compare)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom else None


def ordinal_ranks(x: list[float]) -> list[int]:
    """scipy's rankdata(x, method='ordinal'): ranks 1..n, equal values ranked in the order they appear."""
    order = sorted(range(len(x)), key=lambda i: (x[i], i))
    ranks = [0] * len(x)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    return ranks


def prompt_consistency(
    now: dict[str, float], before: dict[str, float], prompt_of: dict[str, str], ties: str = "ordinal"
) -> dict[str, float]:
    """prompt_id -> c = (tau + 1) / 2 between the two models' mean scores of its responses (those both
    scored, in response-id order: the order ordinal ties break by); prompts with fewer than two such
    responses are left out, and with `tau_b` ties also a constant ranking."""
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for rid in sorted(set(now) & set(before)):
        by_prompt[prompt_of[rid]].append(rid)
    out = {}
    for pid, rids in sorted(by_prompt.items()):
        x, y = [now[r] for r in rids], [before[r] for r in rids]
        if ties == "ordinal":
            x, y = ordinal_ranks(x), ordinal_ranks(y)
        tau = kendall_tau_b(x, y) if len(rids) >= 2 else None
        if tau is not None:
            out[pid] = (tau + 1.0) / 2.0
    return out


def label_smoothing(consistency: list[float], clamp: bool = False) -> float:
    """`avg`: 1 - mean(c), in [0, 1] (CREAM's), or clamped to [0, 0.5]; no measured prompt: 0 (the paper's DPO)."""
    if not consistency:
        return 0.0
    e = max(0.0, 1.0 - sum(consistency) / len(consistency))
    return min(0.5, e) if clamp else min(1.0, e)


def summary(consistency: dict[str, float], clamp: bool = False) -> dict[str, tuple]:
    """The numbers the stage records: mean c with a normal 95% interval, and the label smoothing."""
    cs = list(consistency.values())
    n = len(cs)
    mean = sum(cs) / n if n else None
    half = 1.96 * math.sqrt(sum((c - mean) ** 2 for c in cs) / (n - 1) / n) if n > 1 else None
    return {
        "consistency": (mean, None if half is None else mean - half, None if half is None else mean + half, n),
        "label_smoothing": (label_smoothing(cs, clamp), None, None, n),
    }
