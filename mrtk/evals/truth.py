"""Ground truth per iteration, from the rows the loop already writes (prompts with IFEval checks):
how often the actor's answers follow their instructions, and how often the judge, the meta-judge
and the DPO pairs side with the truth. No model call: checking is string work (mrtk.verify).

The numbers (docs/METHOD.md, section "Ground truth"), each with a 95% bootstrap interval
(evals.health.bootstrap_ci) over the units named:
- actor_strict / actor_loose: the share of iteration t's responses passing all their checks
  (IFEval's strict and loose), a prompt's K samples averaged first, then the prompts (units: prompts);
- heldout_strict / heldout_loose: the same for M_t's answers to the held-out slice (prompts.heldout:
  never trained on, the same seeds for every model), and heldout_change_M1 / heldout_change_prev:
  the paired change of the per-prompt strict share from M1 and from M_{t-1} (units: prompts);
- judge_accuracy: over same-prompt pairs of responses where one passes (strict) and one fails, the
  share where the judge's reward (the mean of its valid scores) ranks the passing one higher, a tie
  0.5 (units: pairs);
- meta_accuracy: over the meta-judge's battles, the share where it prefers the judgement whose score
  is closer to the truth: of a passing response the higher score, of a failing one the lower;
  battles between equal scores or without a verdict carry no truth and are left out (units: battles);
  mrtk's operationalisation, not the paper's;
- right_pairs / wrong_pairs: of the kept actor pairs, the share whose chosen response passes and
  rejected fails (right) or the reverse (wrong); the rest are pass-pass or fail-fail (units: pairs).
"""

from __future__ import annotations

from collections import defaultdict

from mrtk.evals.health import Estimate, bootstrap_ci, paired_difference
from mrtk.stages.pairs import rewards as mean_valid_scores
from mrtk.ties import EXACT

EVAL = "truth"


def estimate(values: list[float]) -> Estimate:
    """The mean of per-unit values with its bootstrap 95% interval."""
    if not values:
        return Estimate(None, None, None, 0)
    lo, hi = bootstrap_ci(values)
    return Estimate(sum(values) / len(values), lo, hi, len(values))


def per_prompt_share(verdicts: list[dict], field: str) -> dict[str, float]:
    """prompt_id -> the share of its responses whose `field` (strict | loose) is true."""
    acc: dict[str, list[bool]] = defaultdict(list)
    for v in verdicts:
        acc[v["prompt_id"]].append(bool(v[field]))
    return {p: sum(x) / len(x) for p, x in acc.items()}


def actor_numbers(verdicts: list[dict], prefix: str = "actor") -> dict[str, tuple]:
    return {f"{prefix}_{f}": estimate(list(per_prompt_share(verdicts, f).values())) for f in ("strict", "loose")}


def change(now: list[dict], before: list[dict]) -> tuple:
    """The paired change of the per-prompt strict share (now - before) over the prompts both answered."""
    a, b = per_prompt_share(now, "strict"), per_prompt_share(before, "strict")
    common = sorted(set(a) & set(b))
    d = paired_difference([a[p] for p in common], [b[p] for p in common])
    return Estimate(d["diff"], d["ci_low"], d["ci_high"], d["n"])


def judge_accuracy(verdicts: dict[str, bool], rewards: dict[str, float], prompt_of: dict[str, str]) -> tuple:
    """Same-prompt (pass, fail) pairs of scored responses: 1 when the passing one's reward is higher,
    0.5 on a tie, 0 when lower."""
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for rid in sorted(rewards):
        if rid in verdicts:
            by_prompt[prompt_of[rid]].append(rid)
    credit = []
    for rids in by_prompt.values():
        for good in (r for r in rids if verdicts[r]):
            for bad in (r for r in rids if not verdicts[r]):
                gap = rewards[good] - rewards[bad]
                credit.append(0.5 if abs(gap) <= EXACT else float(gap > 0))
    return estimate(credit)


def meta_accuracy(battles: list[dict], scores: dict[str, float | None], verdicts: dict[str, bool]) -> tuple:
    """Battles (judgement_a, judgement_b, winner, response_id): 1 when the winner's score is the
    one closer to the truth of the judged response, 0 when not; no truth, no unit."""
    credit = []
    for b in battles:
        sa, sb = scores.get(b["judgement_a"]), scores.get(b["judgement_b"])
        passed = verdicts.get(b["response_id"])
        if b["winner"] is None or sa is None or sb is None or passed is None or abs(sa - sb) <= EXACT:
            continue
        closer = b["judgement_a"] if (sa > sb) == passed else b["judgement_b"]
        credit.append(float(b["winner"] == closer))
    return estimate(credit)


def pair_truth(pairs: list[dict], verdicts: dict[str, bool]) -> dict[str, tuple]:
    """Kept actor pairs with both sides checked: right (chosen passes, rejected fails) and wrong shares."""
    seen = [
        (verdicts[p["chosen_id"]], verdicts[p["rejected_id"]])
        for p in pairs
        if p["chosen_id"] in verdicts and p["rejected_id"] in verdicts
    ]
    return {
        "right_pairs": estimate([float(c and not r) for c, r in seen]),
        "wrong_pairs": estimate([float(r and not c) for c, r in seen]),
    }


def iteration_numbers(
    verdicts: list[dict],
    judgements: list[dict],
    battles: list[dict],
    kept_actor_pairs: list[dict],
) -> dict[str, tuple]:
    """The loop-side numbers of one iteration: `verdicts` of its responses, its loop `judgements`,
    the meta-judge's `battles` and the kept actor pairs."""
    strict = {v["response_id"]: bool(v["strict"]) for v in verdicts}
    prompt_of = {v["response_id"]: v["prompt_id"] for v in verdicts}
    rewards = {rid: mean for rid, (mean, _) in mean_valid_scores(judgements).items()}
    scores = {j["judgement_id"]: j["score"] for j in judgements}
    return {
        **actor_numbers(verdicts),
        "judge_accuracy": judge_accuracy(strict, rewards, prompt_of),
        "meta_accuracy": meta_accuracy(battles, scores, strict),
        **pair_truth(kept_actor_pairs, strict),
    }


def heldout_numbers(now: list[dict], first: list[dict] | None, before: list[dict] | None) -> dict[str, tuple]:
    """M_t on the held-out slice, and its paired change from M1 (`first`) and M_{t-1} (`before`)."""
    out = actor_numbers(now, "heldout")
    if first is not None:
        out["heldout_change_M1"] = change(now, first)
    if before is not None:
        out["heldout_change_prev"] = change(now, before)
    return out


SHOWN = (
    "actor_strict",
    "heldout_strict",
    "heldout_change_M1",
    "heldout_change_prev",
    "judge_accuracy",
    "meta_accuracy",
    "right_pairs",
    "wrong_pairs",
)


def fmt(number: tuple) -> str:
    """'0.42 [0.31, 0.55] n=24'; a change whose interval holds zero says so."""
    value, lo, hi, n = number
    if value is None:
        return f"- (n={n})"
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else " [no interval]"
    return f"{value:.2f}{ci} n={n}"


def line(model: str, numbers: dict[str, tuple]) -> str:
    """One line of the run's output: the truth numbers that exist for `model`."""
    parts = [f"{m} {fmt(numbers[m])}" for m in SHOWN if m in numbers and numbers[m][3]]
    for m in ("heldout_change_M1", "heldout_change_prev"):
        if m in numbers and numbers[m][1] is not None and numbers[m][1] <= 0 <= numbers[m][2]:
            parts[[p.split()[0] for p in parts].index(m)] += " (no detectable change)"
    return f"truth {model}: " + ("; ".join(parts) if parts else "no checked responses")
