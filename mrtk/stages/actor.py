"""Actor stage: K sampled responses per prompt, exact duplicates flagged (docs/METHOD.md 1.2)."""

from __future__ import annotations

from mrtk.backends.base import Backend, Progress, Request, SamplingParams
from mrtk.config import ActorCfg
from mrtk.prompts import Template
from mrtk.rows import derive_seed, made_by, response_id


def run_actor(
    backend: Backend,
    prompts: list[dict],
    cfg: ActorCfg,
    template: Template,
    *,
    iteration: int,
    run_seed: int,
    model_version: str,
    on_progress: Progress | None = None,
    kind: str = "actor",
) -> list[dict]:
    """prompt rows ({prompt_id, text}) -> response rows, K per prompt. `kind` "anchor": M1's samples of
    iteration t's prompts for anchored rejection (their own ids and seeds; table anchor_responses);
    "heldout": M_t's answers to the held-out verifiable slice (table heldout_responses), seeded the same
    for every model (the seed leaves the iteration out), so the models' pass rates compare paired."""
    params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    at = 0 if kind == "heldout" else iteration
    seeds = [tuple(derive_seed(run_seed, at, kind, p["prompt_id"], k) for k in range(cfg.k)) for p in prompts]
    requests = [Request(template.render(prompt=p["text"]), s) for p, s in zip(prompts, seeds)]
    outputs = backend.generate(requests, params, on_progress=on_progress)
    rows = []
    for p, gens, row_seeds in zip(prompts, outputs, seeds):
        first_of: dict[str, str] = {}
        for k, (g, seed) in enumerate(zip(gens, row_seeds)):
            rid = response_id(iteration, p["prompt_id"], k, kind)
            duplicate_of = first_of.get(g.text)
            first_of.setdefault(g.text, rid)
            rows.append(
                {
                    "response_id": rid,
                    "iteration": iteration,
                    "prompt_id": p["prompt_id"],
                    "sample_idx": k,
                    "text": g.text,
                    "n_chars": len(g.text),
                    "finish_reason": g.finish,
                    "is_duplicate": duplicate_of is not None,
                    "duplicate_of": duplicate_of,
                    **made_by(template, model_version, params, seed, g),
                }
            )
    return rows
