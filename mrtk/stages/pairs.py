"""Pairs stage: actor pairs with length control and judge pairs from Elo (docs/METHOD.md 3 and 4).

Every prompt yields exactly one pair row per kind: kept, or dropped with the reason, so
`SELECT reason, count(*) FROM pairs GROUP BY 1` explains where the training data went.
Only judgements that parsed take part: an unparsed judgement is never in a pair.

Anchored rejection (`pairs.rejected_from: initial`, Temporal Self-Rewarding, arXiv 2508.06026):
the chosen response is M_t's as always, the rejected one comes from M1's samples of the same
prompt (`anchors`), scored by M_t's judge, so chosen and rejected do not converge as the model
improves. Chosen from M_t's top tier (shortest), rejected from the anchors' bottom tier (longest),
each tier by rho over its own pool; a pair whose anchor scores as high as the chosen is dropped.

Future-guided chosen (`pairs.chosen_from: future`, the same paper's second half): the anchored
pairs (kind `anchored`) train a temporary next model; its samples of the same prompts, scored by
M_t's judge, join M_t's as candidates for the chosen side (top tier over both, shortest), and the
rejected side stays as above. The reading of the recipe is mrtk's (docs/METHOD.md 8).
"""

from __future__ import annotations

import random
from collections import defaultdict

from mrtk.config import MetaJudgeCfg, PairsCfg, at
from mrtk.rows import derive_seed, pair_id
from mrtk.ties import ELO, EXACT


def kept(base: dict, chosen: dict, rejected: dict, id_key: str, **extra) -> dict:
    """A kept pair row: `base` plus both sides' ids (`id_key` of each), scores and lengths."""
    return dict(
        base,
        chosen_id=chosen[id_key],
        rejected_id=rejected[id_key],
        chosen_score=chosen["score"],
        rejected_score=rejected["score"],
        chosen_chars=chosen["n_chars"],
        rejected_chars=rejected["n_chars"],
        **extra,
        status="kept",
        reason="ok",
    )


def rewards(judgements: list[dict]) -> dict[str, tuple[float, int]]:
    """response_id -> (mean of valid scores, number of valid scores); no valid score, no entry."""
    acc: dict[str, list[float]] = defaultdict(list)
    for j in judgements:
        if j["score"] is not None:
            acc[j["response_id"]].append(float(j["score"]))
    return {rid: (sum(s) / len(s), len(s)) for rid, s in acc.items()}


def _pick(rows: list[dict], key, rng: random.Random) -> dict:
    """The row minimising `key`; ties broken by the seeded rng over a stable order."""
    best = min(key(r) for r in rows)
    tied = sorted((r for r in rows if key(r) == best), key=lambda r: r["response_id"])
    return rng.choice(tied)


def rho_tiers(s_max: float, s_min: float, rho: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(top tier, bottom tier) score intervals, both closed."""
    return ((1 - rho) * s_max + rho * s_min, s_max), (s_min, (1 - rho) * s_min + rho * s_max)


def _scored(responses: list[dict], scored: dict[str, tuple[float, int]]) -> list[dict]:
    return [
        dict(r, score=scored[r["response_id"]][0])
        for r in responses
        if not r["is_duplicate"] and r["response_id"] in scored
    ]


def _tier(cands: list[dict], rho: float, top: bool) -> list[dict]:
    s_max, s_min = max(c["score"] for c in cands), min(c["score"] for c in cands)
    (top_lo, _), (_, bottom_hi) = rho_tiers(s_max, s_min, rho)
    return [c for c in cands if (c["score"] >= top_lo - EXACT if top else c["score"] <= bottom_hi + EXACT)]


def actor_pair(
    prompt_id: str,
    responses: list[dict],
    scored: dict[str, tuple[float, int]],
    rho: float,
    max_chosen_chars: float | None,
    rng: random.Random,
    iteration: int,
    anchors: list[dict] | None = None,
    future: list[dict] | None = None,
    kind: str = "actor",
) -> dict:
    """`anchors`: the rejected side comes from them; `future`: the chosen side comes from M_t's samples
    and these together (the rejected side never does)."""
    base = {
        "iteration": iteration,
        "kind": kind,
        "prompt_id": prompt_id,
        "response_id": None,
        "pair_id": pair_id(iteration, kind, prompt_id),
    }
    cands = _scored(responses, scored)
    tops = cands + _scored(future or [], scored)
    pool = cands if anchors is None else _scored(anchors, scored)
    if anchors is None and future is None:
        if len(cands) < 2:
            return dict(base, status="dropped", reason="fewer_than_two_scored_responses")
        if max(c["score"] for c in cands) - min(c["score"] for c in cands) <= EXACT:
            return dict(base, status="dropped", reason="all_scores_tied")
    elif not tops or not pool:
        return dict(base, status="dropped", reason="no_scored_response_or_anchor")
    chosen = _pick(_tier(tops, rho, top=True), lambda r: r["n_chars"], rng)
    rejected = _pick(_tier(pool, rho, top=False), lambda r: -r["n_chars"], rng)
    if (anchors is not None or future is not None) and rejected["score"] >= chosen["score"] - EXACT:
        return dict(
            base, status="dropped", reason=f"{'anchor' if anchors is not None else 'rejected'}_scored_as_high_as_chosen"
        )
    row = kept(base, chosen, rejected, "response_id")
    if chosen["response_id"] == rejected["response_id"]:
        return dict(row, status="dropped", reason="same_response_in_both_tiers")
    if max_chosen_chars is not None and chosen["n_chars"] > max_chosen_chars:
        return dict(row, status="dropped", reason=f"chosen_longer_than_{int(max_chosen_chars)}_chars")
    return row


def _by_prompt(rows: list[dict] | None) -> dict[str, list[dict]] | None:
    if rows is None:
        return None
    grouped: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        grouped[r["prompt_id"]].append(r)
    return grouped


def actor_pairs(
    responses: list[dict],
    judgements: list[dict],
    cfg: PairsCfg,
    *,
    iteration: int,
    run_seed: int,
    anchors: list[dict] | None = None,
    future: list[dict] | None = None,
    kind: str = "actor",
) -> list[dict]:
    """One actor pair row per prompt (of `kind`: actor, or anchored, the temporary next model's pairs).
    `anchors` (M1's samples): the rejected side comes from them (anchored rejection). `future` (the
    temporary next model's samples): candidates for the chosen side beside M_t's (future-guided
    chosen). Their judgements are in `judgements`. Each prompt's draw is seeded by the prompt alone, so
    the anchored pairs equal the actor pairs that anchored rejection alone gives."""
    scored = rewards(judgements)
    by_prompt, anchored, ahead = _by_prompt(responses), _by_prompt(anchors), _by_prompt(future)
    rho, cap = at(cfg.rho, iteration), at(cfg.max_chosen_chars, iteration)
    return [
        actor_pair(
            pid,
            rs,
            scored,
            rho,
            cap,
            random.Random(derive_seed(run_seed, iteration, "actor_pair", pid)),
            iteration,
            None if anchored is None else anchored.get(pid, []),
            None if ahead is None else ahead.get(pid, []),
            kind,
        )
        for pid, rs in sorted(by_prompt.items())
    ]


def judge_pairs(
    picks: dict[str, tuple[str | None, str]],
    elo_rows: list[dict],
    judgements: list[dict],
    cfg: PairsCfg,
    meta_cfg: MetaJudgeCfg,
    *,
    iteration: int,
    run_seed: int,
) -> list[dict]:
    """One judge pair per prompt: highest vs lowest Elo among its picked response's judgements, ties
    broken at random (seeded). A flat Elo (no verdict separates the judgements) is dropped as
    `no_elo_spread` under meta_judge.require_variance (NeMo); without it (the paper) the tie-break
    picks two distinct judgements."""
    by_id = {j["judgement_id"]: j for j in judgements}
    elo_by_response: dict[str, list[dict]] = defaultdict(list)
    for e in elo_rows:
        elo_by_response[e["response_id"]].append(e)
    max_chars = at(meta_cfg.max_chosen_chars, iteration)
    rows = []
    for pid, (rid, why) in sorted(picks.items()):
        base = {
            "iteration": iteration,
            "kind": "judge",
            "prompt_id": pid,
            "response_id": rid,
            "pair_id": pair_id(iteration, "judge", pid),
        }
        ratings = elo_by_response.get(rid or "", [])
        if rid is None:
            rows.append(dict(base, status="dropped", reason=why))
            continue
        flat = len(ratings) >= 2 and max(e["elo"] for e in ratings) - min(e["elo"] for e in ratings) <= ELO
        if len(ratings) < 2 or (flat and meta_cfg.require_variance):
            rows.append(dict(base, status="dropped", reason="no_elo_spread"))
            continue
        rng = random.Random(derive_seed(run_seed, iteration, "judge_pair", pid))
        hi = _pick_elo(ratings, max, rng)
        lo = _pick_elo([e for e in ratings if e is not hi], min, rng)  # distinct from hi also when the Elo is flat
        chosen, rejected = by_id[hi["judgement_id"]], by_id[lo["judgement_id"]]
        row = kept(base, chosen, rejected, "judgement_id", chosen_elo=hi["elo"], rejected_elo=lo["elo"])
        if max_chars is not None and chosen["n_chars"] > max_chars:
            row.update(status="dropped", reason=f"chosen_longer_than_{int(max_chars)}_chars")
        elif cfg.drop_same_score and abs(chosen["score"] - rejected["score"]) <= EXACT:
            row.update(status="dropped", reason="same_score")
        elif cfg.drop_identical_text and chosen["text"] == rejected["text"]:
            row.update(status="dropped", reason="identical_text")
        rows.append(row)
    return rows


def _pick_elo(ratings: list[dict], which, rng: random.Random) -> dict:
    target = which(e["elo"] for e in ratings)
    tied = sorted((e for e in ratings if abs(e["elo"] - target) <= ELO), key=lambda e: e["judgement_id"])
    return rng.choice(tied)


def apply_share_cap(
    actor_rows: list[dict], judge_rows: list[dict], cap: float | None, *, iteration: int, run_seed: int
) -> list[dict]:
    """Drop kept judge pairs (seeded choice) until they are at most `cap` of all kept pairs."""
    kept = [r for r in judge_rows if r["status"] == "kept"]
    if cap is None or not kept:
        return judge_rows
    n_actor = sum(r["status"] == "kept" for r in actor_rows)
    allowed = int(cap * n_actor / (1.0 - cap) + EXACT) if cap < 1.0 else len(kept)
    if len(kept) <= allowed:
        return judge_rows
    rng = random.Random(derive_seed(run_seed, iteration, "share_cap"))
    keep_ids = {r["pair_id"] for r in rng.sample(sorted(kept, key=lambda r: r["pair_id"]), allowed)}
    return [
        dict(r, status="dropped", reason=f"judge_share_cap_{cap:g}")
        if r["status"] == "kept" and r["pair_id"] not in keep_ids
        else r
        for r in judge_rows
    ]
