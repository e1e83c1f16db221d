"""`mrtk judge`: re-judge the responses a run already stored, with another template, score
mode or model, and log the new judgements beside the loop's.

Nothing is generated for the actor: the responses are read from the run. Pointwise
templates write `judgements` rows with `source = 'rejudge'`; pairwise templates write
`pairwise_judgements` (every ordered pair of a prompt's responses, so both positions).
Rows are keyed by template hash, score mode and model version, so the same experiment
resumes where it stopped and different experiments never overwrite each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mrtk.backends import open_policy
from mrtk.config import with_template_sampling
from mrtk.errors import MrtkError
from mrtk.models import pick_device, resolve_model, tokenizer_for
from mrtk.prompts import Template, check_role, load_template
from mrtk.rows import parse_version
from mrtk.lanes import run_chunks
from mrtk.runs import WriterLock, model_for, open_run
from mrtk.stages import judge
from mrtk.ui import QuietUI


@dataclass(frozen=True)
class JudgeJob:
    template: Template
    iterations: tuple[int, ...] | None = None  # None: every iteration with responses
    n: int | None = None
    score_mode: str | None = None
    model: str | None = None  # a model version of the run (M1, M2, ...) or a model directory / id


def load_judge_template(name: str, extra_dirs: list[str | Path] | None = None) -> Template:
    """The template of a judge experiment, validated before any model or database is touched."""
    template = load_template(name, extra_dirs)
    if template.role != "judge":
        raise MrtkError(
            f"template {template.name} has role {template.role!r}; mrtk judge needs a judge template (role: judge)"
        )
    check_role(template, template.stage)
    return template


def rejudge(run_dir: Path, job: JudgeJob, ui=None) -> dict:
    """Judge the stored responses; returns counts (rows written, responses before and after)."""
    ui = ui or QuietUI()
    if job.n is not None and job.n < 1:
        raise MrtkError(f"--n {job.n}: give at least 1 judgement per response")
    with WriterLock(run_dir):
        store, cfg, _ = open_run(run_dir)
        stored = store.response_iterations()
        if not stored:
            raise MrtkError(
                f"run {run_dir} has no responses yet; let `mrtk run` reach the actor stage first (or resume it)"
            )
        its = list(job.iterations or stored)
        missing = [it for it in its if it not in stored]
        if missing:
            raise MrtkError(f"run {run_dir} has no responses for iteration {missing[0]}; it has {stored}")
        jcfg = with_template_sampling(cfg.judge, job.template)
        jcfg = jcfg.model_copy(
            update={k: v for k, v in (("n", job.n), ("score_mode", job.score_mode)) if v is not None}
        )
        if jcfg.score_mode not in ("structured", "free_text"):
            raise MrtkError(f"--score-mode {jcfg.score_mode!r} is not structured or free_text")
        table = judge.Judging(job.template, jcfg).table
        n_responses, before = store.count("responses"), store.count(table)
        store.record_templates([job.template])
        policy = open_policy(
            cfg, pick_device(cfg.runtime.device), run_dir, tokenizer_for
        )  # the run's own backend (SGLang runs: its servers)
        try:
            for it in its:
                version = job.model or f"M{it}"
                model_dir = (
                    model_for(store, cfg, version)
                    if (parse_version(version) or ("",))[0] == "M"
                    else resolve_model(version)
                )
                responses = store.responses(it)
                questions = {p["prompt_id"]: p["text"] for p in store.prompts(it)}
                judging = judge.Judging(job.template, jcfg, source="rejudge", model_version=version)
                key = judging.key
                todo = judging.missing(responses, store.judged_ids(table, it, key))

                def chunk(rows, go, model_dir=model_dir, questions=questions, judging=judging, it=it):
                    return judging.run(
                        policy.use(model_dir),
                        rows,
                        questions,
                        iteration=it,
                        run_seed=cfg.seed,
                        on_progress=go,
                    )

                run_chunks(
                    store,
                    ui,
                    f"it{it} judge {job.template.name}",
                    todo,
                    jcfg.n,
                    chunk,
                    table,
                    cfg.runtime.max_batch_rows,
                    lambda model_dir=model_dir: policy.use(model_dir),
                )
        finally:
            policy.close()  # a launched SGLang server stops; attached ones keep running
        return {
            "written": store.count(table) - before,
            "table": table,
            "iterations": its,
            "key": key,
            "responses_before": n_responses,
            "responses_after": store.count("responses"),
        }
