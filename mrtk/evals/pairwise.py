"""AlpacaEval 2 and Arena-Hard: the policy's answers (rows in, made by `mrtk.evaluate`) judged against
a baseline by an external judge, one `eval_items` row per game with the raw judge text, and the
numbers to `eval_results`: win rates, length control, Bradley-Terry scores, each with the paired
change from the previous model iteration. External calls go to `eval_calls` (see external.py); the
external judge is used here and nowhere else. Everything is keyed by content, so rerunning an eval
only does what is missing.
"""

from __future__ import annotations

import random
from pathlib import Path

from mrtk.data import read_json_or_jsonl
from mrtk.errors import MrtkError
from mrtk.evals import health, metrics
from mrtk.evals.alpaca_official import official_lc
from mrtk.evals.graders import Grader
from mrtk.rows import derive_seed, eval_item_id
from mrtk.store import RunStore
from mrtk.ui import QuietUI

ALPACA_HF = ("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json")


# -- data ---------------------------------------------------------------------------------
def load_instructions(path: str | None) -> list[dict]:
    """[{example_id, instruction, reference?}] from AlpacaEval's JSON list (instruction, output),
    a JSONL of {instruction[, output]}, or, with no path, the Hugging Face dataset (online)."""
    if path is None:
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.utils import logging as hub_logging

            hub_logging.set_verbosity_error()  # its retry warnings fold into the one error line below
            path = hf_hub_download(ALPACA_HF[0], ALPACA_HF[1], repo_type="dataset")
        except Exception as e:
            raise MrtkError(
                f"cannot fetch {ALPACA_HF[1]} from {ALPACA_HF[0]} ({type(e).__name__}); give the file with --data "
                "(AlpacaEval's JSON list of instruction/output, or a JSONL of instructions)"
            ) from None
    rows = read_json_or_jsonl(Path(path))
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str):
            raise MrtkError(f"{path}: item {i} has no string 'instruction'; each item needs one")
        out.append(
            {"example_id": str(r.get("index", i)), "instruction": r["instruction"], "reference": r.get("output")}
        )
    return out


# -- external pairwise evals -------------------------------------------------------------------
def pairwise_external(
    store: RunStore,
    seed: int,
    iteration: int,
    judge,
    eval_name: str,
    grader: Grader,
    examples: list[dict],
    outputs: dict[str, dict],
    baseline: dict[str, str],
    *,
    both_orders: bool,
    ui,
) -> list[dict]:
    """Judge the policy against the baseline on each example with `grader`; one eval_items row per
    game. Single order: policy first or second by a seeded coin per example; both orders: two games."""
    done = {r["item_id"]: r for r in store.eval_items(eval_name, iteration, judge.model)}
    games = []
    for e in examples:
        first = random.Random(derive_seed(seed, eval_name, e["example_id"])).random() < 0.5
        for policy_first in (True, False) if both_orders else (first,):
            games.append((e, policy_first))
    with ui.stage(f"{eval_name} judge {judge.model}", len(games)) as go:
        for e, policy_first in games:
            item_id = eval_item_id(
                eval_name,
                iteration,
                judge.model,
                f"{e['example_id']}/{'policy_first' if policy_first else 'policy_second'}",
            )
            if item_id in done and done[item_id]["parse_status"] == "ok":
                go(1)
                continue
            mine, base = outputs[e["example_id"]]["output"], baseline[e["example_id"]]
            a, b = (mine, base) if policy_first else (base, mine)
            reply = grader.judge(judge, grader.messages(e["instruction"], a, b))
            parsed, p_first, weight = grader.read(reply.text, reply.top_logprobs) if reply.ok else (None, None, 1)
            pref = None if p_first is None else p_first if policy_first else 1.0 - p_first
            store.write_replace(
                "eval_items",
                "item_id",
                [
                    {
                        "item_id": item_id,
                        "eval": eval_name,
                        "iteration": iteration,
                        "example_id": e["example_id"],
                        "slot": "policy_first" if policy_first else "policy_second",
                        "judge": judge.model,
                        "call_key": reply.call_key,
                        "raw_text": reply.text if reply.ok else reply.error,
                        "verdict": parsed.value if parsed else None,
                        "preference": pref,
                        "label": str(weight),
                        "parse_status": parsed.status if parsed else "call_failed",
                        "parse_reason": parsed.reason if parsed else "external_call_failed",
                        "cache_hit": reply.cache_hit,
                        "cost_usd": reply.cost_usd,
                    }
                ],
            )
            go(1)
    wanted = {e["example_id"] for e in examples}  # earlier calls (a larger --limit) stay stored but are not this eval's
    return [r for r in store.eval_items(eval_name, iteration, judge.model) if r["example_id"] in wanted]


def example_preferences(items: list[dict]) -> dict[str, float]:
    """example_id -> the mean preference for the policy over its judged games (unjudged ones left out)."""
    return metrics.group_mean([(r["example_id"], r["preference"]) for r in items if r["preference"] is not None])


def change_from_previous(
    store: RunStore, iteration: int, eval_name: str, judge: str, prefs: dict[str, float]
) -> tuple | None:
    """The paired bootstrap of this iteration's win rate minus the previous model iteration's, over
    the examples both judged (x100, in points): (diff, ci_low, ci_high, n), or None."""
    before = example_preferences(store.eval_items(eval_name, iteration - 1, judge))
    ids = sorted(set(before) & set(prefs))
    if not ids:
        return None
    c = health.paired_difference([100 * prefs[i] for i in ids], [100 * before[i] for i in ids])
    return (c["diff"], c["ci_low"], c["ci_high"], c["n"])


def check_references(examples: list[dict]) -> None:
    """AlpacaEval compares against a reference answer per example: refused before any answer is made."""
    missing = [e["example_id"] for e in examples if not e.get("reference")]
    if missing:
        raise MrtkError(
            f"example {missing[0]} has no reference output; alpaca needs AlpacaEval's file with 'output' (the GPT-4 Turbo reference)"
        )


def alpaca(
    outputs: dict[str, dict],
    judge,
    examples: list[dict],
    grader: Grader,
    *,
    store: RunStore,
    seed: int,
    iteration: int,
    version: str,
    both_orders: bool,
    ui=None,
    difficulty: Path | None = None,
) -> dict:
    """AlpacaEval 2: the policy's `outputs` (example_id -> its eval_outputs row) against the reference
    outputs of model `version` (eval iteration `iteration`; `examples` passed `check_references`).
    `grader`: AlpacaEval's own annotator (weighted preference from logprobs, the leaderboard's LC) or
    mrtk's paraphrase (hard verdicts, LC without the difficulty term)."""
    ui = ui or QuietUI()
    references = {e["example_id"]: e["reference"] for e in examples}
    items = pairwise_external(
        store, seed, iteration, judge, "alpaca", grader, examples, outputs, references, both_orders=both_orders, ui=ui
    )
    prefs = example_preferences(items)
    ids = sorted(prefs)
    wr = metrics.win_rate([prefs[i] for i in ids])
    avg_len = sum(o["n_chars"] for o in outputs.values()) / len(outputs)
    failed = sum(r["preference"] is None for r in items)
    numbers = {
        "win_rate": (wr["win_rate"], None, None, wr["n_total"]),
        "standard_error": (wr["standard_error"], None, None, wr["n_total"]),
        "avg_length": (avg_len, None, None, len(outputs)),
        "unjudged": (float(failed), None, None, len(items)),
    }
    change = change_from_previous(store, iteration, "alpaca", judge.model, prefs)
    if change:
        numbers["win_rate_change_from_previous_iteration"] = change
    details = {"both_orders": both_orders, "annotator": grader.source}
    # the paid-for numbers are recorded first: the LC step below uses an optional package and data file
    store.record_numbers("alpaca", iteration, judge.model, numbers, {**details, "lc": "not computed"})
    lc, how = None, "mrtk paraphrase"
    if grader.leaderboard_lc:  # the leaderboard's GLM, with instruction difficulty
        lc, how = official_lc(
            [
                {
                    "preference": 1.0 + prefs[i],
                    "output_1": references[i],
                    "output_2": outputs[i]["output"],
                    "index": int(i) if str(i).isdigit() else n,
                    "generator_1": "gpt4_1106_preview",
                    "generator_2": f"mrtk-{version}",
                    "annotator": grader.name,
                }
                for n, i in enumerate(ids)
            ],
            difficulty,
        )
    lc_name = "length_controlled_win_rate"
    if lc is None:  # mrtk's GLM on the length term alone: not the leaderboard's LC, and named so
        lc_name = "lc_approx_no_difficulty"
        lc = metrics.length_controlled_win_rate(
            [prefs[i] for i in ids], [outputs[i]["n_chars"] for i in ids], [len(references[i]) for i in ids]
        )
    numbers = dict(
        list(numbers.items())[:2] + [(lc_name, (lc, None, None, wr["n_total"]))] + list(numbers.items())[2:]
    )  # after WR, SE
    store.record_numbers("alpaca", iteration, judge.model, numbers, {**details, "lc": how})
    return {"numbers": numbers, "cost_usd": judge.spent, "calls": judge.calls, "cache_hits": judge.hits}


def arena_hard(
    outputs: dict[str, dict],
    judge,
    questions: list[dict],
    baseline: dict[str, str],
    grader: Grader,
    *,
    store: RunStore,
    seed: int,
    iteration: int,
    ui=None,
) -> dict:
    """The policy's `outputs` to the questions (example_id -> its eval_outputs row), two games each (positions swapped) judged with `grader`: Arena-Hard-Auto's own
    judge config (arena_config.py) or mrtk's named fallback."""
    ui = ui or QuietUI()
    items = pairwise_external(
        store, seed, iteration, judge, "arena-hard", grader, questions, outputs, baseline, both_orders=True, ui=ui
    )
    prefs = [r["preference"] for r in items if r["preference"] is not None for _ in range(int(r["label"] or 1))]
    bt = metrics.bt_score(prefs, seed=seed)
    numbers = {
        "score": (bt["score"], bt["ci_low"], bt["ci_high"], len(items)),
        "unjudged": (float(sum(r["preference"] is None for r in items)), None, None, len(items)),
    }
    change = change_from_previous(store, iteration, "arena-hard", judge.model, example_preferences(items))
    if change:
        numbers["score_change_from_previous_iteration"] = change
    store.record_numbers(
        "arena-hard",
        iteration,
        judge.model,
        numbers,
        {"judge_prompt": grader.source, "max_tokens": grader.max_tokens, "games": len(items)},
    )
    return {"numbers": numbers, "cost_usd": judge.spent, "calls": judge.calls, "cache_hits": judge.hits}


def load_arena(question_file: str, baseline_file: str, limit: int | None) -> tuple[list[dict], dict[str, str]]:
    questions = []
    for i, q in enumerate(read_json_or_jsonl(Path(question_file))):
        try:
            questions.append(
                {"example_id": str(q["uid"]), "instruction": q["prompt"] if "prompt" in q else q["turns"][0]["content"]}
            )
        except (KeyError, IndexError, TypeError):
            raise MrtkError(
                f"--questions {question_file}: item {i} has no 'uid' with a 'prompt' (or turns[0].content); "
                "give Arena-Hard's question.jsonl"
            ) from None
    baseline = {}
    for i, a in enumerate(read_json_or_jsonl(Path(baseline_file))):
        try:
            content = a["messages"][-1]["content"] if "messages" in a else a["choices"][0]["turns"][0]
            baseline[str(a["uid"])] = content["answer"] if isinstance(content, dict) else content
        except (KeyError, IndexError, TypeError):
            raise MrtkError(
                f"--baseline {baseline_file}: item {i} has no 'uid' with an answer (messages[-1].content or "
                "choices[0].turns[0]); give Arena-Hard's model_answer/<model>.jsonl"
            ) from None
        if not isinstance(baseline[str(a["uid"])], str):
            raise MrtkError(
                f"--baseline {baseline_file}: item {i}'s answer is not text; give Arena-Hard's model_answer/<model>.jsonl"
            )
    questions = [q for q in questions if q["example_id"] in baseline][:limit]
    if not questions:
        raise MrtkError(f"no question of {question_file} has a baseline answer in {baseline_file}; check the files")
    return questions, baseline
