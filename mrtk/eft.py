"""`mrtk data eft`: the paper's first step, EFT data from Open Assistant human rankings.

As Self-Rewarding builds it (Yuan et al. 2024, section 3; docs/METHOD.md section 1): the seed model
judges every human-ranked answer of an Open Assistant ranked list with the run's pointwise rubric
template (N judgements each, through the one judging path, `evals.judge_eval`), and a list is kept
only when its mean scores rank the answers as the humans did. Each kept answer gives one SFT
example: the judge prompt, and as completion the one of its N judgements whose score is nearest the
answer's mean (the first such). Both rules are mrtk's reading (METHOD section 1): the paper gives
neither how ties count nor which judgement a multi-sample answer keeps.

Every judgement is an `eval_items` row of eval `eft` with its raw text; the agreement with the
humans (Table 7's, with and without ties, and Spearman) and the kept share are `eval_results` rows.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from mrtk.errors import MrtkError
from mrtk.evals import metrics
from mrtk.evals.judge_eval import ranked_pairs
from mrtk.prompts import Template, judge_prompt
from mrtk.rejudge import load_judge_template
from mrtk.rows import answer_id, derive_seed, format_score
from mrtk.store import RunStore

EVAL = "eft"


def agrees(ranks: list[int], scores: list[float | None]) -> bool:
    """The keep rule: every pair of answers the humans ranked apart (rank 0 the best) has the
    better-ranked answer strictly higher in mean score, i.e. Table 7's agreement (`ranked_pairs`) is a
    hit on every pair of the list. An equal mean, or an answer with no parsed score, disagrees; answers
    the humans ranked equal may score anything."""
    one = {"example_id": "", "replies": [("", r) for r in ranks]}
    labels, preds = ranked_pairs([one], {answer_id("", str(k)): s for k, s in enumerate(scores) if s is not None})
    return labels == preds


def nearest(judgements: list[dict], mean: float) -> dict:
    """The judgement whose score is nearest the answer's mean; the earliest sample on equal distance
    (judgements in sample order)."""
    scored = [j for j in judgements if j["score"] is not None]
    return min(scored, key=lambda j: abs(j["score"] - mean))


def _sample(item: dict) -> int:
    """A judgement's sample index, from its id (`rows.judgement_id`: .../j<k>): item ids sort j10 before j2."""
    return int(item["item_id"].rsplit("/j", 1)[1])


def cap_per_score(examples: list[dict], cap: int | None, seed: int) -> tuple[list[dict], int]:
    """The named rebalancing (off by default): at most `cap` examples per rounded score, a seeded
    sample from each over-full score; (kept in their order, how many dropped)."""
    if cap is None:
        return examples, 0
    by_score: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        by_score.setdefault(round(ex["score"]), []).append(i)
    keep = set()
    for score, idx in by_score.items():
        rng = random.Random(derive_seed(seed, 0, "eft-cap", str(score)))
        keep |= set(idx if len(idx) <= cap else rng.sample(idx, cap))
    return [ex for i, ex in enumerate(examples) if i in keep], len(examples) - len(keep)


def judge_template(name: str, dirs: list) -> Template:
    """The judge template that writes EFT judgements: a pointwise one, which scores each answer."""
    template = load_judge_template(name, dirs)
    if template.stage != "judge":
        raise MrtkError(
            f"template {template.name!r} is a {template.stage} template; EFT data needs a pointwise judge "
            "template that scores each answer (the paper's rubric: judge_additive5)"
        )
    return template


def build(
    res: dict,
    lists: list[dict],
    template: Template,
    *,
    store: RunStore,
    seed: int,
    iteration: int,
    version: str,
    cap: int | None,
):
    """From model `version`'s judgements of every answer of every list (`res`: what
    `mrtk.evaluate.judge_agreement` returns for eval EVAL, eval iteration `iteration`; template: from `judge_template`), keep the
    lists that agree with the humans and return (SFT examples with provenance, statistics)."""
    job, label = res["job"], res["judge"]
    by_answer: dict[str, list[dict]] = {}
    for item in sorted(res["items"], key=_sample):
        by_answer.setdefault(item["slot"], []).append(item)
    examples, kept_lists = [], 0
    for x in lists:
        ids = [answer_id(x["example_id"], str(k)) for k in range(len(x["replies"]))]
        means = [res["scores"].get(i) for i in ids]
        ranks = [rank for _, rank in x["replies"]]
        if not agrees(ranks, means):
            continue
        kept_lists += 1
        for k, ((text, rank), aid, mean) in enumerate(zip(x["replies"], ids, means)):
            chosen = nearest(by_answer[aid], mean)
            completion = (
                chosen["raw_text"]
                if job.cfg.score_mode == "free_text"
                else chosen["raw_text"] + format_score(chosen["score"])
            )
            examples.append(
                {
                    "prompt": judge_prompt(template, x["question"], text),
                    "completion": completion,
                    "tree_id": x["tree_id"],
                    "list_id": x["example_id"],
                    "answer": k,
                    "human_rank": rank,
                    "human_ranks": ranks,
                    "score": chosen["score"],
                    "mean_score": mean,
                    "list_mean_scores": means,
                    "judgement_id": chosen["item_id"],
                    "judge": label,
                }
            )
    examples, capped = cap_per_score(examples, cap, seed)
    kept = metrics.wilson(kept_lists, len(lists)) if lists else (None, None)
    store.record_numbers(
        f"{EVAL}:kept",
        iteration,
        label,
        {"kept_lists": (kept_lists / len(lists) if lists else None, *kept, len(lists))},
        {"template": template.hash, "n": job.cfg.n, "cap_per_score": cap},
    )
    stats = {
        "judge": label,
        "model_version": version,
        "lists": len(lists),
        "kept_lists": kept_lists,
        "examples": len(examples),
        "dropped_by_cap": capped,
        "cap_per_score": cap,
        "score_histogram": dict(sorted(Counter(round(ex["score"]) for ex in examples).items())),
        "agreement": {m: list(v) for m, v in res["numbers"].items()},
        "run": str(store.run_dir),
    }
    return examples, stats


def write(path: Path, examples: list[dict], stats: dict) -> Path:
    """The SFT file (one example per line, the form `sft.file` reads) and its statistics beside it
    (`<name>.stats.json`); both written whole, then moved into place."""
    stats_path = path.with_name(path.name + ".stats.json")
    for target, text in (
        (path, "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples)),
        (stats_path, json.dumps(stats, indent=2) + "\n"),
    ):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    return stats_path
