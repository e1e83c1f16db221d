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
from mrtk.loop import model_for, run_chunks
from mrtk.models import pick_device, resolve_model
from mrtk.prompts import Template, check_role, load_template
from mrtk.rows import pairwise_id
from mrtk.runs import WriterLock, open_run
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
        raise MrtkError(f"template {template.name} has role {template.role!r}; mrtk judge needs a judge template (role: judge)")
    check_role(template, template.stage)
    return template


def rejudge(run_dir: Path, job: JudgeJob, ui=None) -> dict:
    """Judge the stored responses; returns counts (rows written, responses before and after)."""
    ui = ui or QuietUI()
    if job.n is not None and job.n < 1:
        raise MrtkError(f"--n {job.n}: give at least 1 judgement per response")
    with WriterLock(run_dir):
        store, cfg, _ = open_run(run_dir)
        stored = [r["iteration"] for r in store.fetch("SELECT DISTINCT iteration FROM responses ORDER BY 1")]
        its = list(job.iterations or stored)
        missing = [it for it in its if it not in stored]
        if missing:
            raise MrtkError(f"run {run_dir} has no responses for iteration {missing[0]}; it has {stored or 'none yet'}")
        jcfg = with_template_sampling(cfg.judge, job.template)
        update = {k: v for k, v in (("n", job.n), ("score_mode", job.score_mode)) if v is not None}
        jcfg = jcfg.model_copy(update=update)
        if jcfg.score_mode not in ("structured", "free_text"):
            raise MrtkError(f"--score-mode {jcfg.score_mode!r} is not structured or free_text")
        device = pick_device(cfg.runtime.device)
        n_responses = store.fetch("SELECT count(*) AS n FROM responses")[0]["n"]
        from transformers import AutoTokenizer

        written = 0
        policy = open_policy(cfg, device, run_dir, AutoTokenizer.from_pretrained)  # the run's own backend (SGLang runs: its servers)
        try:
            for it in its:
                version = job.model or f"M{it}"
                model_dir = model_for(store, cfg, version) if version[:1] == "M" and version[1:].isdigit() else resolve_model(version)
                responses = store.fetch("SELECT * FROM responses WHERE iteration = ? ORDER BY response_id", [it])
                questions = {p["prompt_id"]: p["text"] for p in store.fetch("SELECT prompt_id, text FROM prompts WHERE iteration = ?", [it])}

                def backend(model_dir=model_dir):
                    return policy.use(model_dir)

                key = judge.rejudge_key(job.template, jcfg.score_mode, version)
                label = f"it{it} judge {job.template.name}"
                if job.template.stage == "pairwise-judge":
                    have = {r["judgement_id"] for r in store.fetch("SELECT judgement_id FROM pairwise_judgements WHERE iteration = ?", [it])}
                    todo = [g for g in judge.pairwise_games(responses)  # the same ids run_pairwise_judge gives its rows
                            if any(pairwise_id(g[0]["response_id"], g[1]["response_id"], key, j) not in have for j in range(jcfg.n))]
                    table = "pairwise_judgements"
                    fn = lambda rows, go: judge.run_pairwise_judge(backend(), rows, questions, jcfg, job.template, iteration=it,  # noqa: E731
                                                                   run_seed=cfg.seed, model_version=version, on_progress=go)
                else:
                    have = {r["response_id"] for r in store.fetch(
                        "SELECT DISTINCT response_id FROM judgements WHERE iteration = ? AND judgement_id LIKE ?", [it, f"%/{key}/j%"])}
                    todo = [r for r in responses if not r["is_duplicate"] and r["response_id"] not in have]
                    table = "judgements"
                    fn = lambda rows, go: judge.run_judge(backend(), rows, questions, jcfg, job.template, iteration=it,  # noqa: E731
                                                          run_seed=cfg.seed, model_version=version, on_progress=go, source="rejudge")
                before = store.fetch(f"SELECT count(*) AS n FROM {table}")[0]["n"]
                run_chunks(store, ui, label, todo, jcfg.n, fn, table, cfg.runtime.max_batch_rows)
                written += store.fetch(f"SELECT count(*) AS n FROM {table}")[0]["n"] - before
        finally:
            policy.close()  # a launched SGLang server stops; attached ones keep running
        return {"written": written, "table": table, "iterations": its, "key": key,
                "responses_before": n_responses, "responses_after": store.fetch("SELECT count(*) AS n FROM responses")[0]["n"]}
