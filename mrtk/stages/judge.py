"""Judge stage: N judgements per response, parsed per METHOD.md section 2.

Two modes. `structured` (the embedded default; SmolLM2-135M never writes `Score: X` by
itself): a short sampled justification, then the fixed text "\\nScore: ", then the
expected score over the probabilities of the digit tokens in the template's score range.
`free_text` (the paper's): sample the whole judgement and parse its last `Score:` line.
Failures are rows with score NULL and a reason; they are never zeros.
"""

from __future__ import annotations

from mrtk.backends.base import Backend, Progress, Request, SamplingParams
from mrtk.config import JudgeCfg
from mrtk.parse import expected_score, parse_score
from mrtk.prompts import Template
from mrtk.rows import derive_seed, format_score, judgement_id

SCORE_SUFFIX = "\nScore: "
SCORE_STOPS = ("Score:", "score:", "SCORE:")


def score_choices(template: Template) -> dict[str, str]:
    low, high = (int(x) for x in template.score_range)
    return {str(d): str(d) for d in range(low, high + 1)}


def judge_prompt(template: Template, question: str, response: str) -> str:
    return template.render(question=question, response=response)


def run_judge(backend: Backend, responses: list[dict], questions: dict[str, str], cfg: JudgeCfg, template: Template, *,
              iteration: int, run_seed: int, model_version: str, on_progress: Progress | None = None) -> list[dict]:
    """response rows -> judgement rows (N per response)."""
    structured = cfg.score_mode == "structured"
    params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens, SCORE_STOPS if structured else ())
    seeds = [tuple(derive_seed(run_seed, iteration, "judge", template.hash, r["response_id"], j) for j in range(cfg.n))
             for r in responses]
    requests = [Request(judge_prompt(template, questions[r["prompt_id"]], r["text"]), s) for r, s in zip(responses, seeds)]
    if structured:
        outputs = backend.generate(requests, params, suffix=SCORE_SUFFIX, choices=score_choices(template), on_progress=on_progress)
    else:
        outputs = backend.generate(requests, params, on_progress=on_progress)
    rows = []
    for r, gens, row_seeds in zip(responses, outputs, seeds):
        for j, (g, seed) in enumerate(zip(gens, row_seeds)):
            if structured:
                raw = g.text + SCORE_SUFFIX
                parsed = expected_score(g.choice_probs or {})
                text = raw + format_score(parsed.value) if parsed.ok else raw
            else:
                raw = text = g.text
                parsed = parse_score(raw, *template.score_range)
            rows.append({
                "judgement_id": judgement_id(r["response_id"], template.hash, j), "iteration": iteration,
                "response_id": r["response_id"], "prompt_id": r["prompt_id"], "sample_idx": j,
                "raw_text": raw, "text": text, "score": parsed.value, "parse_status": parsed.status,
                "parse_reason": parsed.reason, "score_mode": cfg.score_mode,
                "score_probs": g.choice_probs, "score_mass": sum(g.choice_probs.values()) if g.choice_probs else None,
                "n_chars": len(text), "n_tokens": g.n_tokens, "finish_reason": g.finish,
                "template": template.name, "template_hash": template.hash, "model_version": model_version,
                "sampling": params.as_dict(), "seed": seed, "latency_s": g.latency_s,
            })
    return rows
