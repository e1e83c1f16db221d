"""Meta-judge stage: battles among one response's judgements, position weights, Elo (docs/METHOD.md 4).

1. Per prompt, the response whose valid judge scores vary most (seeded tie-break); with
   `require_variance` (NeMo's rule) a prompt whose scores do not vary at all is skipped, without
   it (the paper) the pick is among all responses with two or more valid judgements.
2. Every ordered pair of its distinct valid judgements is a battle (both orders).
3. The meta-judge says which judgement is better (structured: short justification, then
   "\\nWinner: Judgement" and the probabilities of " A" / " B", verdict sampled from them;
   free_text: parse `Winner: Judgement X`). An unparsed verdict is a row with no winner.
4. Position weights: a first-position win weighs win_2nd/(win_1st+win_2nd), a second-position
   win win_1st/(...), counted over the iteration (default) or per response.
5. Bradley-Terry with an L2 term on the weighted battle matrix; Elo = 1000 + 400*log10-odds.

`meta_judge.verdict: soft` (ours, after FairEval's balanced position calibration, arXiv
2305.17926) replaces steps 4-5's hard wins: each battle's p("A") over "A"+"B" (the structured
program's choice probabilities) is read as the probability that its first judgement is better,
the two orders of the same two judgements are averaged (p1 for x first, 1 - p2 for y first), and
that average enters the Bradley-Terry fit as fractional wins. A meta-judge that always prefers the
first position gives 0.5 both ways: a tie, not a win. No position weights: the averaging is the
debiasing.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict

import numpy as np

from mrtk.backends.base import Backend, Progress, Request
from mrtk.config import MetaJudgeCfg
from mrtk.parse import p_first, parse_verdict, sample_verdict
from mrtk.programs import META, raw_text, run_program
from mrtk.prompts import Template
from mrtk.rows import derive_seed, made_by, meta_id
from mrtk.ties import EXACT

_SCORE_LINE = re.compile(r"(?im)^[ \t]*\**score\s*[:：].*$")


def pick_responses(
    responses: list[dict], judgements: list[dict], *, run_seed: int, iteration: int, require_variance: bool = True
) -> dict[str, tuple[str | None, str]]:
    """prompt_id -> (response_id with the highest score variance, "ok") or (None, reason).
    The variance is numpy's population variance (np.var, ddof=0); it only ranks a prompt's
    responses, each with the same N, so the sample variance would pick the same response.
    `require_variance`: NeMo's rule (zero variance everywhere: no pick); off, the paper's (a tie,
    zero included, is broken at random, seeded by prompt)."""
    scores: dict[str, list[float]] = defaultdict(list)
    for j in judgements:
        if j["score"] is not None:
            scores[j["response_id"]].append(j["score"])
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in responses:
        if not r["is_duplicate"]:
            by_prompt[r["prompt_id"]].append(r)
    picks: dict[str, tuple[str | None, str]] = {}
    for pid, rs in sorted(by_prompt.items()):
        candidates = [
            (float(np.var(scores[r["response_id"]])), r["response_id"])
            for r in rs
            if len(scores[r["response_id"]]) >= 2
        ]
        if not candidates:
            picks[pid] = (None, "no_response_with_2_valid_scores")
            continue
        if require_variance:
            candidates = [c for c in candidates if c[0] > 0.0]
        if not candidates:
            picks[pid] = (None, "no_response_with_score_variance")
            continue
        best = max(v for v, _ in candidates)
        tied = sorted(rid for v, rid in candidates if abs(v - best) <= EXACT)
        picks[pid] = (random.Random(derive_seed(run_seed, iteration, "pick", pid)).choice(tied), "ok")
    return picks


def battles(judgements: list[dict]) -> list[tuple[dict, dict]]:
    """All ordered pairs (A, B) of distinct valid judgements: N valid gives N*(N-1) battles."""
    valid = sorted((j for j in judgements if j["score"] is not None), key=lambda j: j["judgement_id"])
    return [(a, b) for a in valid for b in valid if a["judgement_id"] != b["judgement_id"]]


def battle_group(battle: tuple[dict, dict]) -> str:
    """The battles of one response go to a server together: they share its question and response."""
    return battle[0]["response_id"]


def shown(judgement: dict, show_scores: bool) -> str:
    return judgement["text"] if show_scores else _SCORE_LINE.sub("", judgement["text"]).rstrip()


def run_meta_judge(
    backend: Backend,
    fights: list[tuple[dict, dict]],
    questions: dict[str, str],
    responses: dict[str, str],
    cfg: MetaJudgeCfg,
    template: Template,
    *,
    iteration: int,
    run_seed: int,
    model_version: str,
    on_progress: Progress | None = None,
) -> list[dict]:
    """(judgement A, judgement B) battles -> meta-judgement rows."""
    program = META if cfg.mode == "structured" else None
    show_scores = cfg.show_scores and template.show_scores  # a NeMo-style template hides them whatever the config
    seeds = [
        derive_seed(run_seed, iteration, "meta", template.hash, a["judgement_id"], b["judgement_id"]) for a, b in fights
    ]
    requests = [
        Request(
            template.render(
                question=questions[a["prompt_id"]],
                response=responses[a["response_id"]],
                judgement_a=shown(a, show_scores),
                judgement_b=shown(b, show_scores),
            ),
            (s,),
        )
        for (a, b), s in zip(fights, seeds)
    ]
    params, outputs = run_program(backend, requests, cfg, program, on_progress)
    rows = []
    for (a, b), [g], seed in zip(fights, outputs, seeds):
        raw = raw_text(g, program)
        if program:
            parsed, p_a = sample_verdict(g.choice_probs or {}, cfg.temperature, seed), p_first(g.choice_probs or {})
        else:
            parsed, p_a = parse_verdict(g.text), None
        verdict = parsed.value
        rows.append(
            {
                "meta_id": meta_id(a["judgement_id"], b["judgement_id"], template.hash),
                "iteration": iteration,
                "prompt_id": a["prompt_id"],
                "response_id": a["response_id"],
                "judgement_a": a["judgement_id"],
                "judgement_b": b["judgement_id"],
                "raw_text": raw,
                "verdict": verdict,
                "parse_status": parsed.status,
                "parse_reason": parsed.reason,
                "winner": {"A": a["judgement_id"], "B": b["judgement_id"]}.get(verdict) if verdict else None,
                "p_a": p_a,
                "mode": cfg.mode,
                "show_scores": show_scores,
                **made_by(template, model_version, params, seed, g),
            }
        )
    return rows


def position_weights(meta_rows: list[dict], scope: str) -> dict[str, tuple[float, float]]:
    """key (response_id, or "*" for the iteration) -> (w1, w2); scope "none" gives (1, 1)."""
    if scope == "none":
        return defaultdict(lambda: (1.0, 1.0))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for m in meta_rows:
        if m["verdict"] in ("A", "B"):
            key = m["response_id"] if scope == "response" else "*"
            counts[key][0 if m["verdict"] == "A" else 1] += 1
    weights = {}
    for key, (first, second) in counts.items():
        weights[key] = (second / (first + second), first / (first + second))
    return weights


def battle_matrix(meta_rows: list[dict], ids: list[str], w1: float, w2: float) -> np.ndarray:
    """B[m][n] = w1 * [m won as A against n] + w2 * [m won as B against n]."""
    index = {j: i for i, j in enumerate(ids)}
    mat = np.zeros((len(ids), len(ids)))
    for m in meta_rows:
        if m["verdict"] == "A":
            mat[index[m["judgement_a"]], index[m["judgement_b"]]] += w1
        elif m["verdict"] == "B":
            mat[index[m["judgement_b"]], index[m["judgement_a"]]] += w2
    return mat


def soft_preferences(meta_rows: list[dict]) -> dict[tuple[str, str], tuple[float, int]]:
    """(x, y) with x < y -> (probability that judgement x beats y, orders seen): the mean over the
    battles of the two that carry a p_a, each read from x's side (p_a with x first, 1 - p_a with
    y first)."""
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    for m in meta_rows:
        if m.get("p_a") is None:
            continue
        a, b, p = m["judgement_a"], m["judgement_b"], float(m["p_a"])
        seen[(a, b) if a < b else (b, a)].append(p if a < b else 1.0 - p)
    return {k: (sum(v) / len(v), len(v)) for k, v in seen.items()}


def soft_matrix(meta_rows: list[dict], ids: list[str]) -> np.ndarray:
    """B[x][y] = orders x (the mean probability that x beats y): both orders of a pair carry the
    mass of two hard battles, as in the hard matrix."""
    index = {j: i for i, j in enumerate(ids)}
    mat = np.zeros((len(ids), len(ids)))
    for (x, y), (p, orders) in soft_preferences(meta_rows).items():
        mat[index[x], index[y]] += orders * p
        mat[index[y], index[x]] += orders * (1.0 - p)
    return mat


def fit_bradley_terry(mat: np.ndarray, l2: float, iters: int = 100) -> np.ndarray:
    """argmax_e sum_mn B[m,n] log sigmoid(e_m - e_n) - l2/2 |e|^2, by Newton's method (concave)."""
    n = mat.shape[0]
    e = np.zeros(n)
    for _ in range(iters):
        diff = e[:, None] - e[None, :]
        s = 1.0 / (1.0 + np.exp(-diff))
        resid = mat * (1.0 - s) - mat.T * s  # d/d e_m of the (m,n) and (n,m) terms
        grad = resid.sum(1) - l2 * e
        curv = (mat + mat.T) * s * (1.0 - s)
        hess = -np.diag(curv.sum(1)) + curv - l2 * np.eye(n)
        step = np.linalg.solve(hess, -grad)
        e = e + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return e


def elo_ratings(
    meta_rows: list[dict], judgements: list[dict], scope: str, l2: float, verdict: str = "hard"
) -> list[dict]:
    """Elo rows (one per valid judgement of each picked response); `verdict` soft: fractional wins
    from the order-averaged probabilities (soft_matrix), w1 = w2 = 1."""
    weights = position_weights(meta_rows, scope)
    by_response: dict[str, list[dict]] = defaultdict(list)
    for m in meta_rows:
        by_response[m["response_id"]].append(m)
    valid = defaultdict(list)
    for j in judgements:
        if j["score"] is not None:
            valid[j["response_id"]].append(j["judgement_id"])
    rows = []
    for rid, ms in sorted(by_response.items()):
        ids = sorted(valid[rid])
        if verdict == "soft":
            w1, w2, mat = 1.0, 1.0, soft_matrix(ms, ids)
        else:
            w1, w2 = weights.get(rid if scope == "response" else "*", (0.0, 0.0)) if scope != "none" else (1.0, 1.0)
            mat = battle_matrix(ms, ids, w1, w2)
        strength = fit_bradley_terry(mat, l2)
        for i, jid in enumerate(ids):
            rows.append(
                {
                    "iteration": ms[0]["iteration"],
                    "prompt_id": ms[0]["prompt_id"],
                    "response_id": rid,
                    "judgement_id": jid,
                    "elo": 1000.0 + 400.0 * strength[i] / math.log(10.0),
                    "weighted_wins": float(mat[i].sum()),
                    "weighted_losses": float(mat[:, i].sum()),
                    "w1": w1,
                    "w2": w2,
                }
            )
    return rows
