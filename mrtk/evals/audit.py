"""`mrtk eval audit`: an external judge checks a sample of the loop's own judgements.

Evaluation only: the external judge's scores go to `eval_items` / `eval_results` (and its calls
to `eval_calls`), never to `judgements`, so nothing it says can reach `pairs` or training.

The sample is stratified by iteration: the same number of the loop's kept actor pairs from
each iteration (seeded), and for each pair both responses, so that the audit can say how many
of the loop's preferences the external judge would reverse. Each response goes to the external
judge with the very prompt the self-judge saw (the run's judge template: question, response,
rubric), and its score is parsed as the paper's free-text judge (last `Score:` line). Per
iteration: the correlation between the self-judge's mean score and the external score, the
mean bias (self minus external), and the share of pairs the external judge reverses, each with
a 95% interval (bootstrap over responses; Wilson for the share).
"""

from __future__ import annotations

import random

import numpy as np

from mrtk.evals import health, metrics
from mrtk.store import RunStore
from mrtk.parse import parse_score
from mrtk.rows import audit_id, derive_seed
from mrtk.prompts import judge_prompt
from mrtk.ui import QuietUI


def audit(store: RunStore, seed: int, judge, template, sample: int, ui=None) -> dict:
    """No policy model runs here: the external judge scores a sample of the run's actor pairs
    (stratified by iteration, `seed`), and each iteration's numbers go to `eval_results`."""
    ui = ui or QuietUI()
    iterations = store.pair_iterations("actor")
    per_iteration = max(1, sample // (2 * max(1, len(iterations))))
    chosen_pairs = []
    for it in iterations:
        kept = store.kept_pairs(it, "actor")
        chosen_pairs += random.Random(derive_seed(seed, "audit", it)).sample(kept, min(per_iteration, len(kept)))
    ids = sorted({p[k] for p in chosen_pairs for k in ("chosen_id", "rejected_id")})
    responses, questions, self_scores = store.responses_by_id(ids), store.all_prompts(), store.mean_scores(ids)
    external: dict[str, float] = {}
    with ui.stage(f"audit {judge.model}", len(ids)) as go:
        for rid in ids:
            r = responses[rid]
            reply = judge.ask(
                [
                    {
                        "role": "user",
                        "content": judge_prompt(template, questions[(r["iteration"], r["prompt_id"])], r["text"]),
                    }
                ]
            )
            parsed = parse_score(reply.text, *template.score_range) if reply.ok else None
            if parsed is not None and parsed.ok:
                external[rid] = parsed.value
            store.write_replace(
                "eval_items",
                "item_id",
                [
                    {
                        "item_id": audit_id(judge.model, rid),
                        "eval": "audit",
                        "iteration": r["iteration"],
                        "example_id": rid,
                        "slot": "response",
                        "judge": judge.model,
                        "call_key": reply.call_key,
                        "raw_text": reply.text if reply.ok else reply.error,
                        "score": external.get(rid),
                        "parse_status": parsed.status if parsed else "call_failed",
                        "parse_reason": parsed.reason if parsed else "external_call_failed",
                        "cache_hit": reply.cache_hit,
                        "cost_usd": reply.cost_usd,
                    }
                ],
            )
            go(1)
    out = {}
    for it in iterations:
        mine = [rid for rid in ids if responses[rid]["iteration"] == it and rid in external and rid in self_scores]
        s, e = np.array([self_scores[i] for i in mine]), np.array([external[i] for i in mine])
        numbers: dict[str, tuple] = {}
        r = health.correlation(s, e)
        if r:
            numbers["correlation"] = (*r, len(mine))
        if len(mine):
            bias = health.paired_difference(list(s), list(e))
            numbers["mean_bias"] = (bias["diff"], bias["ci_low"], bias["ci_high"], bias["n"])
        judged = [
            p
            for p in chosen_pairs
            if p["iteration"] == it and p["chosen_id"] in external and p["rejected_id"] in external
        ]
        reversed_ = sum(external[p["rejected_id"]] > external[p["chosen_id"]] for p in judged)
        if judged:
            numbers["pairs_reversed"] = (reversed_ / len(judged), *metrics.wilson(reversed_, len(judged)), len(judged))
        store.record_numbers(
            "audit", it, judge.model, numbers, {"template": template.hash, "responses": len(mine), "pairs": len(judged)}
        )
        out[it] = numbers
    return {"iterations": out, "cost_usd": judge.spent, "calls": judge.calls, "cache_hits": judge.hits}
