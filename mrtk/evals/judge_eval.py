"""`mrtk eval judge`: how well the policy's own judge agrees with human labels.

The judge is the run's (its judge template and score mode, or `--template`), run by the
model under evaluation, on human-labelled pairs: a pointwise template scores both answers
(N judgements each; the higher mean wins, equal means are a tie), a pairwise template judges
both orders (position consistency: the share of pairs whose winner survives the swap).
Ranked lists (OASST) give a Spearman correlation between mean scores and human ranks, and the
paper's Table 7 agreement over every pair of differently ranked replies (with and without ties).
Every judgement is an `eval_items` row with its raw text; the numbers go to `eval_results`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mrtk.config import JudgeCfg, with_template_sampling
from mrtk.evals import health, metrics
from mrtk.prompts import Template
from mrtk.rows import answer_id, eval_item_id
from mrtk.stages import judge as judge_stage
from mrtk.store import RunStore


@dataclass
class EvalJudging:
    """What judging human pairs and ranked lists with model `version` is: the judging job (the run's
    judge config with the template's sampling, `n` and `verdict` if given), the answers it judges
    and their questions, and the `eval_items` label its rows go under (eval `name`, eval iteration
    `iteration`). The caller runs `judge` on `todo(store)` with its own runner; `numbers` reads the
    rows back."""

    pairs: list[dict]
    lists: list[dict]
    template: Template
    judge_cfg: JudgeCfg
    name: str
    iteration: int
    version: str
    n: int | None = None
    verdict: str | None = None  # pairwise templates: hard or soft, else the run's judge.verdict
    job: judge_stage.Judging = field(init=False)
    questions: dict[str, str] = field(init=False)  # example id -> question, read by every chunk

    def __post_init__(self) -> None:
        cfg = with_template_sampling(self.judge_cfg, self.template)
        if self.n is not None:
            cfg = cfg.model_copy(update={"n": self.n})
        if self.verdict is not None:
            cfg = cfg.model_copy(update={"verdict": self.verdict})
        self.job = judge_stage.Judging(self.template, cfg, source="eval", model_version=self.version)
        self.questions = {p["example_id"]: p["question"] for p in self.pairs} | {
            x["example_id"]: x["question"] for x in self.lists
        }

    @property
    def label(self) -> str:
        return f"{self.template.name}:{self.job.cfg.score_mode}:{self.version}"

    def answers(self) -> list[dict]:
        """Both answers of every pair; every reply of every ranked list when the judge scores (ranked
        lists need a score per reply for Spearman; a pairwise judge only orders two answers)."""
        out = [
            {"response_id": answer_id(p["example_id"], side), "prompt_id": p["example_id"], "text": p[side]}
            for p in self.pairs
            for side in ("a", "b")
        ]
        if self.job.scores:
            out += [
                {"response_id": answer_id(x["example_id"], str(k)), "prompt_id": x["example_id"], "text": text}
                for x in self.lists
                for k, (text, _) in enumerate(x["replies"])
            ]
        return [a | {"is_duplicate": False} for a in out]

    def todo(self, store: RunStore) -> list:
        """The judging units with rows still missing (after a crash, only those)."""
        prefix = eval_item_id(self.name, self.iteration, self.label, "")
        stored = {r["item_id"].removeprefix(prefix) for r in store.eval_items(self.name, self.iteration, self.label)}
        return self.job.missing(self.answers(), stored)

    def judge(self, backend, units: list, run_seed: int, on_progress=None) -> list[dict]:
        """`units` judged by `backend`: eval_items rows, each with its raw text."""
        out = self.job.run(
            backend, units, self.questions, iteration=self.iteration, run_seed=run_seed, on_progress=on_progress
        )
        return [_item(self.job, r, self.name, self.iteration, self.label) for r in out]

    def numbers(self, store: RunStore) -> dict:
        """The stored judgements read into agreement with the humans (ties 0.5), position consistency
        (pairwise), Spearman and Table 7's agreement (ranked lists) and the parse-failure rate;
        recorded in `eval_results` (soft verdicts under the label with ':soft' added: the same
        judgements read another way)."""
        job, pairs, lists = self.job, self.pairs, self.lists
        items = store.eval_items(self.name, self.iteration, self.label)
        preds, consistency = job.preferences(said(items))
        agree = (
            metrics.agreement([p["label"] for p in pairs], [preds.get(p["example_id"]) for p in pairs])
            if pairs
            else None
        )
        numbers = agreement_numbers(agree) if agree else {}
        if consistency[3]:  # pairs a pairwise judge saw in both orders
            numbers["position_consistency"] = consistency
        scores = judge_stage.mean_scores(said(items))
        if lists and job.scores:  # the mean scores against the human ranks
            numbers |= list_numbers(lists, scores)
        failed = sum(i["parse_status"] != "ok" for i in items)
        numbers["parse_failure_rate"] = (failed / len(items) if items else None, None, None, len(items))
        soft = job.pairwise and job.cfg.verdict == "soft"
        label_read = f"{self.label}:soft" if soft else self.label
        store.record_numbers(
            self.name,
            self.iteration,
            label_read,
            numbers,
            {
                "template": self.template.hash,
                "n": job.cfg.n,
                "score_mode": job.cfg.score_mode,
                "verdict": job.cfg.verdict if job.pairwise else None,
            },
        )
        return {
            "judge": label_read,
            "numbers": numbers,
            "credits": pair_credits(pairs, preds),
            "job": job,
            "items": items,
            "scores": scores,  # unit (an answer) -> its mean parsed score
        }


def pair_credits(pairs: list[dict], preds: dict[str, str | None]) -> dict[str, float]:
    """example -> 1 (the judge agrees with the humans), 0.5 (a tie), 0 (it disagrees): the paper's agreement per pair."""
    return {
        p["example_id"]: 0.5 if preds.get(p["example_id"]) is None else float(preds[p["example_id"]] == p["label"])
        for p in pairs
    }


def _item(job, row: dict, name: str, it: int, label: str) -> dict:
    """A judgement row as an eval_items row (keyed by the judgement id; the unit in `slot`)."""
    u = job.said(row)
    return {
        "item_id": eval_item_id(name, it, label, row["judgement_id"]),
        "eval": name,
        "iteration": it,
        "example_id": u["prompt_id"],
        "slot": u["unit"],
        "judge": label,
        "raw_text": row["raw_text"],
        "score": u["score"],
        "verdict": u["verdict"],
        "preference": u["p_a"],
        "parse_status": row["parse_status"],
        "parse_reason": row["parse_reason"],
        "cache_hit": False,
    }


def said(items: list[dict]) -> list[dict]:
    """eval_items rows back in the form Judging.preferences reads."""
    return [
        {
            "prompt_id": i["example_id"],
            "unit": i["slot"],
            "score": i["score"],
            "verdict": i["verdict"],
            "p_a": i["preference"],
        }
        for i in items
    ]


def list_numbers(lists: list[dict], scores: dict[str, float]) -> dict[str, tuple]:
    """Ranked lists (OASST) against a judge's mean scores: `spearman`, the mean over lists of the rank
    correlation between scores and human ranks (a BCa bootstrap interval over lists; lists with a
    constant side left out), and Table 7's agreement over every pair of differently ranked replies,
    with and without ties (`ranked_pairs`; Wilson intervals)."""
    rhos = [
        metrics.spearman(
            [scores.get(answer_id(x["example_id"], str(k)), float("nan")) for k in range(len(x["replies"]))],
            [-rank for _, rank in x["replies"]],
        )
        for x in lists
    ]
    rhos = [r for r in rhos if r is not None and r == r]
    numbers = {
        "spearman": (sum(rhos) / len(rhos), *health.bootstrap_ci(rhos), len(rhos)) if rhos else (None, None, None, 0)
    }
    list_labels, list_preds = ranked_pairs(lists, scores)
    if list_labels:
        numbers |= agreement_numbers(metrics.agreement(list_labels, list_preds), "list_")
    return numbers


def agreement_numbers(a: dict, prefix: str = "") -> dict[str, tuple]:
    """`metrics.agreement`'s result as eval numbers: agreement (ties half a hit), without ties, tie rate."""
    return {
        f"{prefix}agreement": (a["agreement"], a["ci_low"], a["ci_high"], a["n"]),
        f"{prefix}agreement_without_ties": (
            a["agreement_without_ties"],
            a["ci_low_without_ties"],
            a["ci_high_without_ties"],
            a["n"] - a["ties"],
        ),
        f"{prefix}tie_rate": (a["ties"] / a["n"], *metrics.wilson(a["ties"], a["n"]), a["n"]),
    }


def ranked_pairs(lists: list[dict], scores: dict[str, float]) -> tuple[list[str], list[str | None]]:
    """Every pair of replies of a ranked list (OASST) with different human ranks, as (label, prediction):
    the label is the better-ranked reply ('a' = the earlier one in the list, rank 0 the best), the
    prediction the one with the higher mean score, None on equal means or a missing score (a tie, half
    a hit in `agreement`, as the paper's Table 7 counts them). Pairs of one list are not independent, so
    the Wilson interval over them is narrower than it should be."""
    labels, preds = [], []
    for x in lists:
        ids = [answer_id(x["example_id"], str(k)) for k in range(len(x["replies"]))]
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                ri, rj = x["replies"][i][1], x["replies"][j][1]
                if ri == rj:
                    continue
                si, sj = scores.get(ids[i]), scores.get(ids[j])
                labels.append("a" if ri < rj else "b")
                preds.append(None if si is None or sj is None or si == sj else ("a" if si > sj else "b"))
    return labels, preds
