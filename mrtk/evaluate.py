"""The producing side of the evals: the model under evaluation opened from a run (`open_model`), its
answers to an eval's examples (`answers`: `eval_outputs`) and its judgements of human pairs and
ranked lists (`judge_agreement`: `eval_items`), made through the lanes like every stage's calls.
`evals/` reads the rows and computes the numbers; it never opens a model or drives calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mrtk.backends import Policy, Request, SamplingParams, open_policy
from mrtk.config import RunConfig
from mrtk.errors import MrtkError
from mrtk.evals.judge_eval import EvalJudging
from mrtk.lanes import run_chunks
from mrtk.models import pick_device, tokenizer_for
from mrtk.prompts import Template, load_template
from mrtk.rows import derive_seed, eval_output_id
from mrtk.runs import model_for, open_run
from mrtk.store import RunStore
from mrtk.ui import QuietUI


@dataclass
class EvalModel:
    """A run's model version (`iteration`: the model iteration that trained it, 0 the seed model M1),
    loaded on first use on the run's own backend (the embedded one, or the run's SGLang servers:
    attached, or launched here and stopped on exit)."""

    store: RunStore
    cfg: RunConfig
    iteration: int
    version: str
    model_dir: str
    _policy: Policy | None = None

    def backend(self):
        if self._policy is None:
            self._policy = open_policy(
                self.cfg, pick_device(self.cfg.runtime.device), self.store.run_dir, tokenizer_for
            )
        return self._policy.use(self.model_dir)

    def __enter__(self) -> "EvalModel":
        return self

    def __exit__(self, *exc) -> None:
        if self._policy is not None:
            self._policy.close()


def open_model(run_dir: Path, iteration: int | None) -> EvalModel:
    """The model iteration `iteration` of the run trained (M<iteration+1>); the newest by default."""
    store, cfg, _ = open_run(run_dir)
    trained = store.trained_iterations()
    it = trained[-1] if iteration is None and trained else (iteration or 0)
    if it and it not in trained:
        raise MrtkError(
            f"run {run_dir} has no model from iteration {it}; trained iterations: {trained or 'none'} (0 is the seed model)"
        )
    version = f"M{it + 1}"
    return EvalModel(store, cfg, it, version, model_for(store, cfg, version))


def answers(m: EvalModel, eval_name: str, examples: list[dict], params: SamplingParams, ui) -> dict[str, dict]:
    """The policy's answer to each example with the run's own actor template (generated once, then
    read back): example_id -> its `eval_outputs` row, for this eval's examples only."""
    template = load_template(m.cfg.actor.template, m.cfg.prompts.template_dirs, role="actor")
    have = m.store.eval_outputs(eval_name, m.iteration)
    todo = [e for e in examples if e["example_id"] not in have]

    def fn(rows, go):
        seeds = [derive_seed(m.cfg.seed, "eval", eval_name, m.iteration, e["example_id"]) for e in rows]
        gens = m.backend().generate(
            [Request(template.render(prompt=e["instruction"]), (s,)) for e, s in zip(rows, seeds)],
            params,
            on_progress=go,
        )
        return [
            {
                "output_id": eval_output_id(eval_name, m.iteration, e["example_id"]),
                "eval": eval_name,
                "iteration": m.iteration,
                "example_id": e["example_id"],
                "instruction": e["instruction"],
                "output": g.text,
                "n_chars": len(g.text),
                "n_tokens": g.n_tokens,
                "finish_reason": g.finish,
                "model_version": m.version,
                "sampling": params.as_dict(),
                "seed": s,
                "latency_s": g.latency_s,
            }
            for e, [g], s in zip(rows, gens, seeds)
        ]

    label = f"{eval_name} answers ({m.version})"
    run_chunks(m.store, ui, label, todo, 1, fn, "eval_outputs", m.cfg.runtime.max_batch_rows, m.backend)
    stored = m.store.eval_outputs(eval_name, m.iteration)
    return {e["example_id"]: stored[e["example_id"]] for e in examples}


def judge_agreement(
    store: RunStore,
    cfg: RunConfig,
    iteration: int,
    version: str,
    backend,
    pairs: list[dict],
    lists: list[dict],
    template: Template,
    *,
    n: int | None,
    name: str,
    ui=None,
    verdict: str | None = None,
) -> dict:
    """Model `version` (eval iteration `iteration`; `backend()` opens it, only when there is something
    to judge) judges the human pairs and ranked lists it has not judged yet; evals/judge_eval reads the
    rows into numbers (see EvalJudging.numbers for what comes back)."""
    ej = EvalJudging(pairs, lists, template, cfg.judge, name, iteration, version, n=n, verdict=verdict)
    run_chunks(
        store,
        ui or QuietUI(),
        f"eval judge ({ej.label})",
        ej.todo(store),
        ej.job.cfg.n,
        lambda units, go: ej.judge(backend(), units, cfg.seed, on_progress=go),
        "eval_items",
        cfg.runtime.max_batch_rows,
        backend,
    )
    return ej.numbers(store)
