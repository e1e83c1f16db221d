"""`mrtk eval alpaca | arena-hard | judge`: evaluate a run's models, one iteration at a time.

`--iteration t` evaluates the model iteration t trained (M<t+1>); 0 is the seed model M1;
the default is the newest. The policy's answers go to `eval_outputs`, each judged item to
`eval_items` (with the raw judge text), each number to `eval_results`; external calls to
`eval_calls` (see external.py). Everything is keyed by content, so rerunning an eval only
does what is missing. The external judge is used here and nowhere else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from mrtk.backends import Policy, Request, SamplingParams, open_policy
from mrtk.config import RunConfig
from mrtk.data import read_json_or_jsonl
from mrtk.errors import MrtkError
from mrtk.evals import metrics
from mrtk.models import pick_device, tokenizer_for
from mrtk.evals.alpaca_official import official_lc
from mrtk.evals.graders import Grader
from mrtk.prompts import load_template
from mrtk.rows import derive_seed, eval_item_id, eval_output_id
from mrtk.lanes import run_chunks
from mrtk.runs import model_for, open_run
from mrtk.store import RunStore
from mrtk.ui import QuietUI

ALPACA_HF = ("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json")


@dataclass
class Target:
    """The model under evaluation: a run's model version, loaded lazily on the run's own backend
    (the embedded one, or the run's SGLang servers: attached, or launched and stopped on exit)."""

    store: RunStore
    cfg: RunConfig
    iteration: int
    version: str
    model_dir: str
    _policy: Policy | None = None  # the loop hands in its own, which is never closed here
    _opened: bool = False  # the policy was opened here (on first use), so closed on exit

    def backend(self):
        if self._policy is None:
            self._policy = open_policy(
                self.cfg, pick_device(self.cfg.runtime.device), self.store.run_dir, tokenizer_for
            )
            self._opened = True
        return self._policy.use(self.model_dir)

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc) -> None:
        if self._opened:
            self._policy.close()


def model_of(t: Target) -> dict:
    """What an eval that needs a model takes: the run's store and config, the eval iteration, the model
    version, and the opener of its backend (called only when there is something to generate)."""
    return {"store": t.store, "cfg": t.cfg, "iteration": t.iteration, "version": t.version, "backend": t.backend}


def open_target(run_dir: Path, iteration: int | None) -> Target:
    store, cfg, _ = open_run(run_dir)
    trained = store.trained_iterations()
    it = trained[-1] if iteration is None and trained else (iteration or 0)
    if it and it not in trained:
        raise MrtkError(
            f"run {run_dir} has no model from iteration {it}; trained iterations: {trained or 'none'} (0 is the seed model)"
        )
    version = f"M{it + 1}"
    return Target(store, cfg, it, version, model_for(store, cfg, version))


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


# -- policy outputs -------------------------------------------------------------------------
def policy_outputs(t: Target, eval_name: str, examples: list[dict], params: SamplingParams, ui) -> dict[str, dict]:
    """The policy's answer to each example (generated once, then read back)."""
    template = load_template(
        t.cfg.actor.template, t.cfg.prompts.template_dirs, role="actor"
    )  # the run's own actor template
    have = t.store.eval_outputs(eval_name, t.iteration)
    todo = [e for e in examples if e["example_id"] not in have]

    def fn(rows, go):
        seeds = [derive_seed(t.cfg.seed, "eval", eval_name, t.iteration, e["example_id"]) for e in rows]
        gens = t.backend().generate(
            [Request(template.render(prompt=e["instruction"]), (s,)) for e, s in zip(rows, seeds)],
            params,
            on_progress=go,
        )
        return [
            {
                "output_id": eval_output_id(eval_name, t.iteration, e["example_id"]),
                "eval": eval_name,
                "iteration": t.iteration,
                "example_id": e["example_id"],
                "instruction": e["instruction"],
                "output": g.text,
                "n_chars": len(g.text),
                "n_tokens": g.n_tokens,
                "finish_reason": g.finish,
                "model_version": t.version,
                "sampling": params.as_dict(),
                "seed": s,
                "latency_s": g.latency_s,
            }
            for e, [g], s in zip(rows, gens, seeds)
        ]

    run_chunks(
        t.store,
        ui,
        f"{eval_name} answers ({t.version})",
        todo,
        1,
        fn,
        "eval_outputs",
        t.cfg.runtime.max_batch_rows,
        t.backend,
    )
    stored = t.store.eval_outputs(eval_name, t.iteration)
    return {
        e["example_id"]: stored[e["example_id"]] for e in examples
    }  # this eval's examples, not every one answered before


# -- external pairwise evals -------------------------------------------------------------------
def pairwise_external(
    t: Target,
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
    done = {r["item_id"]: r for r in t.store.eval_items(eval_name, t.iteration, judge.model)}
    games = []
    for e in examples:
        first = random.Random(derive_seed(t.cfg.seed, eval_name, e["example_id"])).random() < 0.5
        for policy_first in (True, False) if both_orders else (first,):
            games.append((e, policy_first))
    with ui.stage(f"{eval_name} judge {judge.model}", len(games)) as go:
        for e, policy_first in games:
            item_id = eval_item_id(
                eval_name,
                t.iteration,
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
            t.store.write_replace(
                "eval_items",
                "item_id",
                [
                    {
                        "item_id": item_id,
                        "eval": eval_name,
                        "iteration": t.iteration,
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
    return [r for r in t.store.eval_items(eval_name, t.iteration, judge.model) if r["example_id"] in wanted]


def write_results(t: Target, eval_name: str, judge: str, numbers: dict[str, tuple], details: dict) -> None:
    """numbers: metric -> (value, ci_low, ci_high, n)."""
    t.store.record_numbers(eval_name, t.iteration, judge, numbers, details)


def example_preferences(items: list[dict]) -> dict[str, float]:
    """example_id -> the mean preference for the policy over its judged games (unjudged ones left out)."""
    return metrics.group_mean([(r["example_id"], r["preference"]) for r in items if r["preference"] is not None])


def change_from_previous(t: Target, eval_name: str, judge: str, prefs: dict[str, float]) -> tuple | None:
    """The paired bootstrap of this iteration's win rate minus the previous model iteration's, over
    the examples both judged (x100, in points): (diff, ci_low, ci_high, n), or None."""
    from mrtk.evals import health

    before = example_preferences(t.store.eval_items(eval_name, t.iteration - 1, judge))
    ids = sorted(set(before) & set(prefs))
    if not ids:
        return None
    c = health.paired_difference([100 * prefs[i] for i in ids], [100 * before[i] for i in ids])
    return (c["diff"], c["ci_low"], c["ci_high"], c["n"])


def alpaca(
    t: Target,
    judge,
    examples: list[dict],
    grader: Grader,
    params: SamplingParams,
    *,
    both_orders: bool,
    ui=None,
    difficulty: Path | None = None,
) -> dict:
    """AlpacaEval 2 against the reference outputs. `grader`: AlpacaEval's own annotator (weighted
    preference from logprobs, the leaderboard's LC) or mrtk's paraphrase (hard verdicts, LC without
    the difficulty term)."""
    ui = ui or QuietUI()
    missing = [e["example_id"] for e in examples if not e.get("reference")]
    if missing:
        raise MrtkError(
            f"example {missing[0]} has no reference output; alpaca needs AlpacaEval's file with 'output' (the GPT-4 Turbo reference)"
        )
    references = {e["example_id"]: e["reference"] for e in examples}
    outputs = policy_outputs(t, "alpaca", examples, params, ui)
    items = pairwise_external(t, judge, "alpaca", grader, examples, outputs, references, both_orders=both_orders, ui=ui)
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
    change = change_from_previous(t, "alpaca", judge.model, prefs)
    if change:
        numbers["win_rate_change_from_previous_iteration"] = change
    details = {"both_orders": both_orders, "annotator": grader.source}
    # the paid-for numbers are recorded first: the LC step below uses an optional package and data file
    write_results(t, "alpaca", judge.model, numbers, {**details, "lc": "not computed"})
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
                    "generator_2": f"mrtk-{t.version}",
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
    write_results(t, "alpaca", judge.model, numbers, {**details, "lc": how})
    return {"numbers": numbers, "cost_usd": judge.spent, "calls": judge.calls, "cache_hits": judge.hits}


def arena_hard(
    t: Target, judge, questions: list[dict], baseline: dict[str, str], grader: Grader, params: SamplingParams, ui=None
) -> dict:
    """Two games per question (positions swapped) judged with `grader`: Arena-Hard-Auto's own
    judge config (arena_config.py) or mrtk's named fallback."""
    ui = ui or QuietUI()
    outputs = policy_outputs(t, "arena-hard", questions, params, ui)
    items = pairwise_external(t, judge, "arena-hard", grader, questions, outputs, baseline, both_orders=True, ui=ui)
    prefs = [r["preference"] for r in items if r["preference"] is not None for _ in range(int(r["label"] or 1))]
    bt = metrics.bt_score(prefs, seed=t.cfg.seed)
    numbers = {
        "score": (bt["score"], bt["ci_low"], bt["ci_high"], len(items)),
        "unjudged": (float(sum(r["preference"] is None for r in items)), None, None, len(items)),
    }
    change = change_from_previous(t, "arena-hard", judge.model, example_preferences(items))
    if change:
        numbers["score_change_from_previous_iteration"] = change
    write_results(
        t,
        "arena-hard",
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
