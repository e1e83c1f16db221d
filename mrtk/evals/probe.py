"""Judge health inside the loop (`probe.*`): M_t's judge on human-labelled pairs, with the paired
change from M_{t-1}, and the drift of its scores on a frozen set of iteration-1 responses.
The human pairs are judged here, through judge_eval's one judging path on the loop's own policy
(handed in on the Target, never closed here); the frozen set is re-judged by the loop. This module
turns both into `eval_results` rows."""

from __future__ import annotations

from pathlib import Path

from mrtk.evals import health
from mrtk.evals.judge_eval import judge_agreement, pair_credits, said
from mrtk.evals.run import Target, model_of, write_results
from mrtk.store import RunStore


def human_agreement(t: Target, pairs: list[dict], template, probe_cfg, ui) -> None:
    """Agreement with the human labels (ties 0.5), and from the second model on the paired
    bootstrap change from the previous model with its verdict."""
    name = f"probe:{Path(probe_cfg.file).stem}"
    res = judge_agreement(pairs, [], template, **model_of(t), n=probe_cfg.n, name=name, ui=ui)
    previous = t.store.eval_items(name, t.iteration - 1)
    if previous:  # the paired change from the previous model, per probe pair
        before = pair_credits(pairs, res["job"].preferences(said(previous))[0])
        ids = sorted(set(before) & set(res["credits"]))
        change = health.paired_difference([res["credits"][i] for i in ids], [before[i] for i in ids])
        numbers = dict(
            res["numbers"], agreement_change=(change["diff"], change["ci_low"], change["ci_high"], change["n"])
        )
        write_results(t, name, res["judge"], numbers, {"verdict": health.verdict(change), "template": template.hash})


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
