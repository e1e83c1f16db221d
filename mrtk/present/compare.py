"""`mrtk compare`: two judge set-ups over the same stored responses, side by side.

A judge set is every judgement one set-up produced in a run: a template (by name or hash),
a score mode, a source (`loop` or `rejudge`) and who judged (`own`: the model of each
iteration, else a model version). Each set gives every response a score: its mean judge
score (pointwise templates) or its share of games won (pairwise templates), and so a
preference between any two responses to the same prompt. From those the comparison reports
score distributions, tie and parse-failure rates, the score-length correlation, how often the
two sets prefer the same response, and the actor pairs each would build (docs/METHOD.md 3) with how
many of one set's pairs the other set reverses.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from mrtk.config import validate_config
from mrtk.errors import MrtkError
from mrtk.evals.metrics import pearson, wilson
from mrtk.stages import judge
from mrtk.stages.pairs import actor_pairs
from mrtk.store.reads import judge_set_rows, judge_sets, reading, responses_in, stored_config


def label(s: dict) -> str:
    return ":".join(
        [s["template"], s["score_mode"], s["source"]] + ([s["judged_by"]] if s["judged_by"] != "own" else [])
    )


def pick_set(sets: list[dict], spec: str) -> dict:
    """The one judge set matching every ':'-separated part of `spec` (template name or hash,
    score mode, source, model version)."""
    parts = [p for p in spec.split(":") if p]
    fields = ("template", "template_hash", "score_mode", "source", "judged_by")
    found = [s for s in sets if all(any(str(s[f]) == p for f in fields) for p in parts)]
    if len(found) == 1:
        return found[0]
    have = ", ".join(label(s) for s in sets) or "none"
    if not found:
        raise MrtkError(f"no judge set matches {spec!r}; this run has: {have} (judge with: mrtk judge --template NAME)")
    raise MrtkError(
        f"{spec!r} matches {len(found)} judge sets ({', '.join(label(s) for s in found)}); name one exactly, e.g. {label(found[0])}"
    )


def compare_run(run_dir: Path, spec_a: str, spec_b: str, iteration: int | None = None) -> dict:
    with reading(run_dir) as con:
        sets = judge_sets(con)
        a, b = pick_set(sets, spec_a), pick_set(sets, spec_b)
        its = sorted(set(a["iterations"]) & set(b["iterations"]))
        if iteration is not None:
            its = [iteration] if iteration in its else []
        if not its:
            raise MrtkError(
                f"{label(a)} and {label(b)} share no judged iteration{'' if iteration is None else f' {iteration}'}; "
                f"they cover {a['iterations']} and {b['iterations']}"
            )
        cfg = validate_config(stored_config(con), "stored config")
        responses = responses_in(con, its)
        loaded = [{"kind": s["kind"], "rows": judge_set_rows(con, s, its)} for s in (a, b)]
    return compare_sets(
        responses, *loaded, pairs_cfg=cfg.pairs, run_seed=cfg.seed, labels=(label(a), label(b)), iterations=its
    )


def compare_sets(
    responses: list[dict],
    set_a: dict,
    set_b: dict,
    *,
    pairs_cfg,
    run_seed: int,
    labels: tuple[str, str],
    iterations: list[int],
) -> dict:
    live = [r for r in responses if not r["is_duplicate"]]
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for r in live:
        by_prompt[f"{r['iteration']}/{r['prompt_id']}"].append(r["response_id"])
    chars = {r["response_id"]: r["n_chars"] for r in live}
    out: dict = {"labels": list(labels), "iterations": iterations, "sets": []}
    prefs, kept = [], []
    for s in (set_a, set_b):
        scores = judge.set_scores(s["kind"], s["rows"])
        p = judge.set_preferences(s["kind"], s["rows"], scores, by_prompt)
        pairs = []
        for it in iterations:
            its_resp = [r for r in live if r["iteration"] == it]
            fake = [{"response_id": rid, "score": v} for rid, v in scores.items()]
            pairs += [
                x
                for x in actor_pairs(its_resp, fake, pairs_cfg, iteration=it, run_seed=run_seed)
                if x["status"] == "kept"
            ]
        scored = [(scores[rid], chars[rid]) for rid in scores if rid in chars]
        values = [r["score"] for r in s["rows"] if r.get("score") is not None]  # pairwise rows carry no score
        summary = {
            "kind": s["kind"],
            "rows": len(s["rows"]),
            "parse_failure_rate": _share(sum(r["parse_status"] != "ok" for r in s["rows"]), len(s["rows"])),
            "responses_scored": len(scores),
            "mean_score": _mean(list(scores.values())),
            "score_hist": dict(sorted(Counter(round(v) for v in values).items())) if values else None,
            "tie_rate": _share(sum(v == 0 for v in p.values()), len(p)),
            "score_length_corr": pearson([x for x, _ in scored], [y for _, y in scored]),
            "actor_pairs": len(pairs),
        }
        summary |= judge.set_position_stats(s["kind"], s["rows"])
        out["sets"].append(summary)
        prefs.append(p)
        kept.append(pairs)
    common = [k for k in prefs[0] if k in prefs[1] and prefs[0][k] != 0 and prefs[1][k] != 0]
    out["compared_pairs"] = len(common)
    out["agreement"] = _share(sum(prefs[0][k] == prefs[1][k] for k in common), len(common))
    same = {(x["chosen_id"], x["rejected_id"]) for x in kept[0]} & {(x["chosen_id"], x["rejected_id"]) for x in kept[1]}
    out["same_actor_pairs"] = len(same)
    out["flipped"] = [sum(_reverses(x, prefs[1 - i]) for x in kept[i]) for i in (0, 1)]
    agreeing = sum(prefs[0][k] == prefs[1][k] for k in common)
    out["agreement_ci"] = proportion_ci(agreeing, len(common))
    out["flipped_share"] = [_share(out["flipped"][i], len(kept[i])) for i in (0, 1)]
    out["flipped_ci"] = [proportion_ci(out["flipped"][i], len(kept[i])) for i in (0, 1)]
    return out


def proportion_ci(k: int, n: int) -> tuple[float, float] | None:
    """Wilson 95% interval of k/n (the one `mrtk eval judge` uses), or None for n = 0."""
    return wilson(k, n) if n else None


def _reverses(pair: dict, prefs: dict[tuple[str, str], int]) -> bool:
    """Does the other set prefer this pair's rejected response over its chosen one?"""
    c, r = pair["chosen_id"], pair["rejected_id"]
    x, y = sorted((c, r))
    v = prefs.get((x, y), 0)
    return v != 0 and (x if v > 0 else y) == r


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
