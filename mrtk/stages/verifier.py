"""The verifier control arm (`rewards: verifier`): each response is scored by its prompt's IFEval
checks instead of the self-judge, and the loop builds its actor pairs from those scores as it
would from the judge's (K samples, rho length control, DPO). It is a control, not the method: it
tells how much this model, DPO set-up and budget can learn with perfect rewards, so a self-judging
arm can be read against it. Not the paper's; mrtk's (docs/METHOD.md).

A verdict is written as one `judgements` row per distinct response (source 'loop', template and
key `verifier`, model_version `verifier`: no model was called), its raw text the per-instruction
results, its score 5 x the share of instructions followed (IFEval's strict check), on the 0-5 scale
of the paper's rubric, so every reader of judgements (pairs, summary, SQL) reads it unchanged.
"""

from __future__ import annotations

import json

from mrtk.backends.base import Progress
from mrtk.rows import judgement_id
from mrtk.verify import Checks, Verdict, verify

KEY = "verifier"
SCALE = 5.0


def verdict_row(response: dict, source: str, prompt: str, checks: Checks) -> dict:
    """A `verdicts` row: IFEval's numbers for one response (source: 'loop' or 'heldout')."""
    v = verify(response["text"], prompt, checks)
    return {
        "response_id": response["response_id"],
        "source": source,
        "iteration": response["iteration"],
        "prompt_id": response["prompt_id"],
        **_numbers(v),
    }


def verdict_rows(responses: list[dict], source: str, prompts: list[dict]) -> list[dict]:
    """`verdicts` rows of the responses whose prompt (in `prompts`) has checks; others are skipped."""
    by_id = {p["prompt_id"]: p for p in prompts if p["checks"]}
    return [
        verdict_row(r, source, by_id[r["prompt_id"]]["text"], Checks.from_json(by_id[r["prompt_id"]]["checks"]))
        for r in responses
        if r["prompt_id"] in by_id
    ]


def _numbers(v: Verdict) -> dict:
    return {
        "strict": v.strict,
        "loose": v.loose,
        "partial_strict": v.partial_strict,
        "partial_loose": v.partial_loose,
        "per_instruction": [{"id": i, "strict": s, "loose": lo} for i, s, lo in v.per_instruction],
    }


class VerifierJudging:
    """The judge stage's job (`stages.judge.Judging`'s shape: table, key, missing, run) with the
    checks in place of the model: one row per distinct response, no backend call."""

    table = "judgements"
    key = KEY
    n = 1

    def __init__(self, prompts: list[dict]):
        self.checks = {p["prompt_id"]: Checks.from_json(p["checks"]) for p in prompts}

    def missing(self, responses: list[dict], stored: set[str]) -> list[dict]:
        return [r for r in responses if not r["is_duplicate"] and judgement_id(r["response_id"], KEY, 0) not in stored]

    def run(
        self,
        backend,
        units: list[dict],
        questions: dict[str, str],
        *,
        iteration: int,
        run_seed: int,
        model_version: str,
        on_progress: Progress | None = None,
    ) -> list[dict]:
        """responses -> one judgements row each (the backend is not called)."""
        rows = []
        for r in units:
            v = verify(r["text"], questions[r["prompt_id"]], self.checks[r["prompt_id"]])
            rows.append(
                {
                    "judgement_id": judgement_id(r["response_id"], KEY, 0),
                    "iteration": iteration,
                    "response_id": r["response_id"],
                    "prompt_id": r["prompt_id"],
                    "sample_idx": 0,
                    "raw_text": json.dumps(_numbers(v)),
                    "score": SCALE * v.partial_strict,
                    "parse_status": "ok",
                    "score_mode": KEY,
                    "template": KEY,
                    "template_hash": KEY,
                    "model_version": KEY,
                    "seed": 0,
                    "source": "loop",
                }
            )
            if on_progress:
                on_progress(1)
        return rows
