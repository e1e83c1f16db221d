"""Judge health inside the loop (`probe.*`), rows in, numbers out: M_t's judgements of human-labelled
pairs (made by the loop through `mrtk.evaluate.judge_agreement`) with the paired change from M_{t-1},
and the drift of its scores on a frozen set of iteration-1 responses (re-judged by the loop). This
module turns both into `eval_results` rows."""

from __future__ import annotations

from mrtk.evals import health
from mrtk.evals.judge_eval import pair_credits, said
from mrtk.store import RunStore


def human_agreement_change(store: RunStore, name: str, iteration: int, pairs: list[dict], res: dict) -> None:
    """From the second model on, the paired bootstrap change in agreement with the human labels (ties 0.5)
    from the previous model's judgements of the same pairs, with its verdict; `res` is this model's
    (`judge_agreement`'s result for eval `name`, eval iteration `iteration`)."""
    previous = store.eval_items(name, iteration - 1)
    if not previous:
        return
    before = pair_credits(pairs, res["job"].preferences(said(previous))[0])
    ids = sorted(set(before) & set(res["credits"]))
    change = health.paired_difference([res["credits"][i] for i in ids], [before[i] for i in ids])
    numbers = dict(res["numbers"], agreement_change=(change["diff"], change["ci_low"], change["ci_high"], change["n"]))
    store.record_numbers(
        name,
        iteration,
        res["judge"],
        numbers,
        {"verdict": health.verdict(change), "template": res["job"].template.hash},
    )


def record_drift(
    store: RunStore, iteration: int, version: str, frozen: list[dict], template, key: str | None, score_mode: str
) -> None:
    """Mean shift, top-score share, tie rate and score-length r of `version`'s scores (M_t, eval
    iteration t-1) on the frozen responses against iteration 1's loop scores (`key` None: M1 itself,
    the baseline). Rows in, numbers out: the loop judged them."""
    ids = [r["response_id"] for r in frozen]
    base = store.mean_scores(ids, it=1, template_hash=template.hash)
    now = base if key is None else store.mean_scores(ids, it=1, key=key)
    numbers = health.drift(
        base,
        now,
        {r["response_id"]: r["n_chars"] for r in frozen},
        {r["response_id"]: r["prompt_id"] for r in frozen},
        template.score_range[1],
    )
    store.record_numbers(
        "frozen",
        iteration,
        f"{template.name}:{score_mode}:{version}",
        numbers,
        {"responses": len(ids), "template": template.hash},
    )
