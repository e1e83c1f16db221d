"""`mrtk eval judge`: how well the policy's own judge agrees with human labels.

The judge is the run's (its judge template and score mode, or `--template`), run by the
model under evaluation, on human-labelled pairs: a pointwise template scores both answers
(N judgements each; the higher mean wins, equal means are a tie), a pairwise template judges
both orders (position consistency: the share of pairs whose winner survives the swap).
Ranked lists (OASST) give a Spearman correlation between mean scores and human ranks.
Every judgement is an `eval_items` row with its raw text; the numbers go to `eval_results`.
"""

from __future__ import annotations

from collections import defaultdict

from mrtk.config import with_template_sampling
from mrtk.evals import metrics
from mrtk.evals.run import Target, write_results
from mrtk.runs import run_chunks
from mrtk.prompts import Template
from mrtk.rows import judgement_id, pairwise_id
from mrtk.stages import judge as judge_stage
from mrtk.ui import QuietUI


def _items(rows: list[dict], name: str, it: int, judge_label: str, pairwise: bool) -> list[dict]:
    out = []
    for r in rows:
        if pairwise:
            slot, score, verdict = f"{r['response_a']}|{r['response_b']}", None, r["verdict"]
            example = r["prompt_id"]
        else:
            slot, score, verdict, example = r["response_id"], r["score"], None, r["prompt_id"]
        out.append({"item_id": f"{name}/{it}/{judge_label}/{r['judgement_id']}", "eval": name, "iteration": it, "example_id": example,
                    "slot": slot, "judge": judge_label, "raw_text": r["raw_text"], "score": score, "verdict": verdict,
                    "preference": r.get("p_a"), "parse_status": r["parse_status"], "parse_reason": r["parse_reason"], "cache_hit": False})
    return out


def judge_agreement(t: Target, pairs: list[dict], lists: list[dict], template: Template, *, n: int | None, name: str = "judge",
                    ui=None) -> dict:
    ui = ui or QuietUI()
    cfg = with_template_sampling(t.cfg.judge, template)
    if n is not None:
        cfg = cfg.model_copy(update={"n": n})
    pairwise = template.stage == "pairwise-judge"
    label = f"{template.name}:{cfg.score_mode}:{t.version}"
    have = {r["item_id"] for r in t.store.eval_items(name, t.iteration, label)}
    questions = {p["example_id"]: p["question"] for p in pairs} | {x["example_id"]: x["question"] for x in lists}
    answers = [{"response_id": f"{p['example_id']}#{side}", "prompt_id": p["example_id"], "text": p[side], "is_duplicate": False}
               for p in pairs for side in ("a", "b")]
    answers += [{"response_id": f"{x['example_id']}#{k}", "prompt_id": x["example_id"], "text": text, "is_duplicate": False}
                for x in lists for k, (text, _) in enumerate(x["replies"])] if not pairwise else []

    def done(unit_ids: list[str]) -> bool:
        return all(f"{name}/{t.iteration}/{label}/{u}" in have for u in unit_ids)

    key = judge_stage.rejudge_key(template, cfg.score_mode, t.version)
    if pairwise:
        games = [g for g in judge_stage.pairwise_games(answers)
                 if not done([pairwise_id(g[0]["response_id"], g[1]["response_id"], key, j) for j in range(cfg.n)])]
        fn = lambda rows, go: _items(judge_stage.run_pairwise_judge(t.backend(), rows, questions, cfg, template, iteration=t.iteration,  # noqa: E731
                                     run_seed=t.cfg.seed, model_version=t.version, on_progress=go), name, t.iteration, label, True)
        run_chunks(t.store, ui, f"eval judge ({label})", games, cfg.n, fn, "eval_items", t.cfg.runtime.max_batch_rows)
    else:
        todo = [a for a in answers if not done([judgement_id(a["response_id"], key, j) for j in range(cfg.n)])]
        fn = lambda rows, go: _items(judge_stage.run_judge(t.backend(), rows, questions, cfg, template, iteration=t.iteration,  # noqa: E731
                                     run_seed=t.cfg.seed, model_version=t.version, on_progress=go, source="eval"), name, t.iteration, label, False)
        run_chunks(t.store, ui, f"eval judge ({label})", todo, cfg.n, fn, "eval_items", t.cfg.runtime.max_batch_rows)

    items = t.store.eval_items(name, t.iteration, label)
    preds, consistency = predictions(items, pairwise)
    labels = [p["label"] for p in pairs]
    agree = metrics.agreement(labels, [preds.get(p["example_id"]) for p in pairs]) if pairs else None
    numbers = {}
    if agree:
        numbers["agreement"] = (agree["agreement"], agree["ci_low"], agree["ci_high"], agree["n"])
        numbers["agreement_without_ties"] = (agree["agreement_without_ties"], agree["ci_low_without_ties"], agree["ci_high_without_ties"],
                                             agree["n"] - agree["ties"])
        numbers["tie_rate"] = (agree["ties"] / agree["n"], *metrics.wilson(agree["ties"], agree["n"]), agree["n"])
    if pairwise:
        numbers["position_consistency"] = consistency
    if lists and not pairwise:
        scores = _mean_scores(items)
        rhos = [metrics.spearman([scores.get(f"{x['example_id']}#{k}", float("nan")) for k in range(len(x["replies"]))],
                                 [-rank for _, rank in x["replies"]]) for x in lists]
        rhos = [r for r in rhos if r is not None and r == r]
        numbers["spearman"] = (sum(rhos) / len(rhos) if rhos else None, None, None, len(rhos))
    failed = sum(i["parse_status"] != "ok" for i in items)
    numbers["parse_failure_rate"] = (failed / len(items) if items else None, None, None, len(items))
    write_results(t, name, label, numbers, {"template": template.hash, "n": cfg.n, "score_mode": cfg.score_mode})
    return {"judge": label, "numbers": numbers, "credits": pair_credits(pairs, preds)}


def pair_credits(pairs: list[dict], preds: dict[str, str | None]) -> dict[str, float]:
    """example -> 1 (the judge agrees with the humans), 0.5 (a tie), 0 (it disagrees): the paper's agreement per pair."""
    return {p["example_id"]: 0.5 if preds.get(p["example_id"]) is None else float(preds[p["example_id"]] == p["label"]) for p in pairs}


def _mean_scores(items: list[dict]) -> dict[str, float]:
    return metrics.group_mean([(i["slot"], i["score"]) for i in items if i["score"] is not None])


def predictions(items: list[dict], pairwise: bool) -> tuple[dict[str, str | None], tuple]:
    """example -> 'a' | 'b' | None (tie), and (position consistency, None, None, pairs seen in both orders)."""
    if not pairwise:
        scores = _mean_scores(items)
        out = {}
        for ex in {i["example_id"] for i in items}:
            a, b = scores.get(f"{ex}#a"), scores.get(f"{ex}#b")
            out[ex] = None if a is None or b is None or a == b else ("a" if a > b else "b")
        return out, (None, None, None, 0)
    net: dict[str, int] = defaultdict(int)
    by_order: dict[tuple[str, str], int] = defaultdict(int)
    for i in items:
        if i["verdict"] is None:
            continue
        first, second = i["slot"].split("|")
        winner = first if i["verdict"] == "A" else second
        side = winner.rsplit("#", 1)[1]
        net[i["example_id"]] += 1 if side == "a" else -1
        order = "ab" if first.endswith("#a") else "ba"
        by_order[(i["example_id"], order)] += 1 if side == "a" else -1
    out = {ex: (None if v == 0 else ("a" if v > 0 else "b")) for ex, v in net.items()}
    both = [ex for ex in {e for e, _ in by_order} if (ex, "ab") in by_order and (ex, "ba") in by_order]
    same = sum((by_order[(ex, "ab")] > 0) == (by_order[(ex, "ba")] > 0) and by_order[(ex, "ab")] != 0 and by_order[(ex, "ba")] != 0 for ex in both)
    return out, (same / len(both) if both else None, None, None, len(both))
