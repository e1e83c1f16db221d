"""The Meta-Rewarding loop, top to bottom: actor -> judge -> meta-judge -> pairs -> train.

Each stage is a pure function (`stages/`); this file decides what is missing, calls the
stage on it in chunks, and persists after each chunk. Resume is therefore a property of the
loop: a finished stage is skipped, a half-finished one regenerates only its missing rows
(same ids, same seeds), and the tables never hold duplicates.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from mrtk import summary, trackers
from mrtk.backends import open_policy
from mrtk.config import RunConfig, with_template_sampling
from mrtk.data import load_pool, prompts_for_iteration, resolve_data_file, resolve_dir
from mrtk.errors import MrtkError
from mrtk.hardware import apply_threads, inference_dtype, release_memory
from mrtk.models import chat_token_ids, pick_device, resolve_model
from mrtk.prompts import bind_meta_judge, load_template
from mrtk.resources import asset_dir
from mrtk.runs import save_model, set_status
from mrtk.stages import actor, judge, meta_judge, pairs, sft, train
from mrtk.store import RunStore
from mrtk.ui import QuietUI


def check_inputs(cfg: RunConfig, config_dir: Path | None = None, load_tokenizer: bool = True) -> dict:
    """Everything that can be checked without loading weights: templates, data files, model path,
    and (with the tokenizer, which a hub id downloads) prompt and context lengths.
    Relative data paths may sit beside the config (`config_dir`), also when a run is resumed."""
    dirs = [resolve_dir(d, config_dir, "prompts.template_dirs") for d in cfg.prompts.template_dirs]
    judge_t = load_template(cfg.judge.template, dirs, role="judge")
    inputs = {
        "templates": {
            "actor": load_template(cfg.actor.template, dirs, role="actor"),
            "judge": judge_t,
            "meta_judge": bind_meta_judge(load_template(cfg.meta_judge.template, dirs, role="meta-judge"), judge_t),
        },
        "pool": load_pool(resolve_data_file(cfg.prompts.file, config_dir)),
        "sft": sft.load_sft_examples(resolve_data_file(cfg.sft.file, config_dir, "sft.file")) if cfg.sft.file else None,
        "model": resolve_model(cfg.model) if load_tokenizer or cfg.model != "embedded" else cfg.model,  # embedded: no GGUF conversion
    }
    trackers.check_installed(cfg.train.report_to)
    if cfg.probe.file:  # human-labelled pairs M_t judges every iteration
        from mrtk.evals.run import load_human_pairs

        probe = str(resolve_data_file(cfg.probe.file, config_dir, "probe.file"))
        pairs, _ = load_human_pairs(probe)
        if not pairs:
            raise MrtkError(f"probe.file {cfg.probe.file}: no labelled pairs in it; give LLMBar/MT-Bench-human style pairs (mrtk eval judge's format)")
        inputs["probe"] = pairs[: cfg.probe.limit]
        cfg.probe.file = probe
    if cfg.train.accelerate_config:  # as given, beside the config, or shipped (accelerate/zero3_8gpu.yaml)
        name = cfg.train.accelerate_config
        found = [p for p in (Path(name).expanduser(), (config_dir or Path(".")) / name, asset_dir("experiments") / name) if p.is_file()]
        if not found:
            raise MrtkError(f"train.accelerate_config {name!r} not found; give an accelerate config file (see experiments/accelerate/)")
        cfg.train.accelerate_config = str(found[0].resolve())
    if load_tokenizer:
        check_lengths(cfg, inputs)
    return inputs


def check_lengths(cfg: RunConfig, inputs: dict) -> None:
    """Every prompt of the pool within prompts.max_prompt_tokens, and the longest meta-judge prompt
    the run can build (template + prompt + response + two judgements) within the model's context."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(inputs["model"])
    limit = cfg.prompts.max_prompt_tokens
    for p in inputs["pool"]:
        n = len(chat_token_ids(tok, [{"role": "user", "content": p["text"]}], add_generation_prompt=True))
        if n > limit:
            raise MrtkError(f"prompt {p['prompt_id']} of {p['source']} is {n} tokens, over prompts.max_prompt_tokens={limit}; "
                            "shorten or remove it, or raise the limit")
    context = getattr(AutoConfig.from_pretrained(inputs["model"]), "max_position_embeddings", None)
    meta = len(tok(inputs["templates"]["meta_judge"].body, add_special_tokens=False)["input_ids"])
    worst = meta + limit + cfg.actor.max_new_tokens + 2 * (cfg.judge.max_new_tokens + 8) + cfg.meta_judge.max_new_tokens + 16
    if context and worst > context:
        raise MrtkError(f"the longest meta-judge call could reach {worst} tokens, over the model's context of {context}; "
                        "lower prompts.max_prompt_tokens or the max_new_tokens of actor, judge or meta_judge")


def run_chunks(store: RunStore, ui, label: str, todo: list, per_item: int, fn, table: str, max_rows: int) -> None:
    """Call a stage on `todo` in backend-sized chunks, persisting each chunk as it finishes;
    the progress bar counts the model calls still to make (after a resume, only the missing)."""
    if not todo:
        return
    size = max(1, max_rows // per_item)
    with ui.stage(label, len(todo) * per_item) as go:
        for i in range(0, len(todo), size):
            store.write(table, fn(todo[i:i + size], go))


def model_for(store: RunStore, cfg: RunConfig, version: str) -> str:
    """The model directory of a run's model version: M1 is the base model (or the SFT output),
    M<t+1> is what iteration t trained."""
    m = re.fullmatch(r"M(\d+)", version)
    if not m or int(m.group(1)) < 1:
        raise MrtkError(f"model version {version!r} is not M1, M2, ...; name one of this run's models")
    t = int(m.group(1)) - 1
    if t == 0 and not cfg.sft.file:
        return resolve_model(cfg.model)
    rows = store.fetch("SELECT output_model FROM lineage WHERE iteration = ?", [t])
    path = store.run_dir / rows[0]["output_model"] if rows else None  # stored relative: runs can move
    if path is None or not path.is_dir():
        raise MrtkError(f"run {store.run_dir} has no model {version} on disk (iteration {t} did not finish training); "
                        "pick an earlier model version")
    return str(path)


class Loop:
    def __init__(self, store: RunStore, cfg: RunConfig, inputs: dict, ui=None):
        self.t = inputs["templates"]
        cfg = cfg.model_copy(update={name: with_template_sampling(getattr(cfg, name), self.t[name])
                                     for name in ("actor", "judge", "meta_judge")})
        self.store, self.cfg, self.ui = store, cfg, ui or QuietUI()
        self.pool = inputs["pool"]
        self.base_model = inputs["model"]
        self.sft_examples = inputs["sft"]
        self.device = pick_device(cfg.runtime.device)
        apply_threads(cfg.runtime.threads)
        self._tok = self._tok_for = None
        self.policy = open_policy(cfg, self.device, store.run_dir, self._tokenizer, self.ui.info)
        self._serving_recorded = False
        self.probe_pairs = inputs.get("probe") or []

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        finally:
            self.close()

    def _run(self) -> None:
        set_status(self.store, "running")
        self._record_dtype()
        p, n = self.cfg.probe, self.cfg.probe.n or self.cfg.judge.n
        if self.probe_pairs or p.frozen:  # what judge health costs, before it is spent
            self.ui.info(f"judge health: {2 * len(self.probe_pairs) * n} judge calls per iteration on {len(self.probe_pairs)} human pairs"
                         + (f", {p.frozen * self.cfg.judge.n} per iteration from 2 on {p.frozen} frozen responses" if p.frozen else ""))
        if self.sft_examples and not self._done(0, "sft"):
            with self._stage(0, "sft"):
                self._sft()
        for it in range(1, self.cfg.iterations + 1):
            if self._done(it, "train"):
                continue
            model_dir = self.base_model if it == 1 and not self.sft_examples else self._lineage(it - 1)
            self.ui.info(f"[bold]iteration {it}[/bold]  model M{it}: {model_dir}")
            prompts = self._prompts(it, model_dir)
            with self._stage(it, "actor"):
                todo = self._missing(prompts, "prompt_id", "SELECT DISTINCT prompt_id FROM responses WHERE iteration = ?", it)
                self._chunks(f"it{it} actor", todo, self.cfg.actor.k, lambda rows, go: actor.run_actor(
                    self._backend(model_dir), rows, self.cfg.actor, self.t["actor"], iteration=it,
                    run_seed=self.cfg.seed, model_version=f"M{it}", on_progress=go), "responses")
            questions = {p["prompt_id"]: p["text"] for p in prompts}
            responses = self.store.fetch("SELECT * FROM responses WHERE iteration = ? ORDER BY response_id", [it])
            with self._stage(it, "judge"):
                todo = self._missing([r for r in responses if not r["is_duplicate"]], "response_id",
                                     "SELECT DISTINCT response_id FROM judgements WHERE iteration = ? AND template_hash = ? AND source = 'loop'",
                                     it, self.t["judge"].hash)
                self._chunks(f"it{it} judge", todo, self.cfg.judge.n, lambda rows, go: judge.run_judge(
                    self._backend(model_dir), rows, questions, self.cfg.judge, self.t["judge"], iteration=it,
                    run_seed=self.cfg.seed, model_version=f"M{it}", on_progress=go), "judgements")
            judgements = self.store.fetch("SELECT * FROM judgements WHERE iteration = ? AND template_hash = ? AND source = 'loop' ORDER BY judgement_id",
                                          [it, self.t["judge"].hash])
            if self.cfg.probe.file or self.cfg.probe.frozen:  # judge health: humans, and a frozen set of responses
                with self._stage(it, "probe"):
                    self._probe(it, model_dir)
            picks = meta_judge.pick_responses(responses, judgements, run_seed=self.cfg.seed, iteration=it)
            elo_rows: list[dict] = []
            if it in self.cfg.pairs.judge_iterations:
                with self._stage(it, "meta_judge"):
                    fights = [f for pid, (rid, _) in picks.items() if rid
                              for f in meta_judge.battles([j for j in judgements if j["response_id"] == rid])]
                    seen = {(m["judgement_a"], m["judgement_b"]) for m in self.store.fetch(
                        "SELECT judgement_a, judgement_b FROM meta_judgements WHERE iteration = ? AND template_hash = ?",
                        [it, self.t["meta_judge"].hash])}
                    todo = [f for f in fights if (f[0]["judgement_id"], f[1]["judgement_id"]) not in seen]
                    texts = {r["response_id"]: r["text"] for r in responses}
                    self._chunks(f"it{it} meta-judge", todo, 1, lambda rows, go: meta_judge.run_meta_judge(
                        self._backend(model_dir), rows, questions, texts, self.cfg.meta_judge, self.t["meta_judge"],
                        iteration=it, run_seed=self.cfg.seed, model_version=f"M{it}", on_progress=go), "meta_judgements")
                    metas = self.store.fetch("SELECT * FROM meta_judgements WHERE iteration = ? AND template_hash = ?",
                                             [it, self.t["meta_judge"].hash])
                    elo_rows = meta_judge.elo_ratings(metas, judgements, self.cfg.meta_judge.position_weights, self.cfg.meta_judge.elo_l2)
                    self._replace("elo", it, elo_rows)
            with self._stage(it, "pairs"):
                actor_rows = pairs.actor_pairs(responses, judgements, self.cfg.pairs, iteration=it, run_seed=self.cfg.seed)
                judge_rows = []
                if it in self.cfg.pairs.judge_iterations:
                    judge_rows = pairs.judge_pairs(picks, elo_rows, judgements, self.cfg.pairs, self.cfg.meta_judge,
                                                   iteration=it, run_seed=self.cfg.seed)
                    judge_rows = pairs.apply_share_cap(actor_rows, judge_rows, self.cfg.pairs.judge_share_cap,
                                                       iteration=it, run_seed=self.cfg.seed)
                self._replace("pairs", it, actor_rows + judge_rows)
            with self._stage(it, "train"):
                self._train(it, model_dir, questions, responses, judgements)
            self._prune_models(it)
            if self.cfg.train.report_to:
                trackers.log_loop(self.cfg.train.report_to, self.store.run_dir, self.store.run_dir.name, it,
                                  trackers.loop_metrics(self.store, it))
            self.ui.table(summary.iteration_table(self.store, it))
        set_status(self.store, "success")

    def _record_dtype(self) -> None:
        """The generation dtype this machine gets (auto decides per machine), on the runs row and on screen."""
        if self.cfg.backend == "sglang":
            dtype, why = None, "served by SGLang (the server's --dtype)"
        else:
            dtype, why = inference_dtype(self.cfg.runtime.inference_dtype, self.device)
        with self.store.tx() as con:
            con.execute("UPDATE runs SET inference_dtype = ?, inference_dtype_reason = ?", [dtype, why]).fetchall()
        self.ui.info(f"generation dtype: {dtype or 'server'} ({why})")

    # -- training -------------------------------------------------------------------------
    def _train(self, it: int, model_dir: str, questions: dict, responses: list[dict], judgements: list[dict]) -> None:
        kept = self.store.fetch("SELECT * FROM pairs WHERE iteration = ? AND status = 'kept' ORDER BY pair_id", [it])
        examples = train.examples_from_pairs(kept, questions, {r["response_id"]: r for r in responses},
                                             {j["judgement_id"]: j for j in judgements}, self.t["judge"])
        fitted, too_long = train.fit_examples(examples, self._tokenizer(model_dir), self.cfg.train.max_length)
        with self.store.tx() as con:
            for pair_id, reason in too_long.items():
                con.execute("UPDATE pairs SET status = 'dropped', reason = ? WHERE pair_id = ?", [reason, pair_id]).fetchall()
        if not fitted:
            raise MrtkError(f"iteration {it}: no preference pairs to train on (see: mrtk query 'select reason, count(*) from pairs group by 1'); "
                            "raise prompts.per_iteration or actor.k, or lower pairs.rho")
        self.policy.release()  # the generation copy (embedded) or the server's GPU memory (SGLang) goes to DPO
        out = self.store.run_dir / "models" / f"M{it + 1}"
        steps = train.planned_steps(len(fitted), self.cfg.train, it)
        work = self.store.run_dir / "tmp" / f"train{it}"
        if self.cfg.train.num_processes > 1 or self.cfg.train.accelerate_config:  # accelerate launch; the workers save the model
            from mrtk.train_worker import launch_command, run_distributed

            (work / "examples.json").parent.mkdir(parents=True, exist_ok=True)
            (work / "examples.json").write_text(json.dumps(fitted))
            cmd = launch_command(work / "spec.json", self.cfg.train, self.device)
            self.ui.info(f"it{it} train: accelerate launch {' '.join(cmd[3:])}  (log: {self.store.run_dir / 'train.log'})")
            result = run_distributed({"model_dir": model_dir, "examples_path": str(work / "examples.json"),
                                      "train": self.cfg.train.model_dump(mode="json"), "iteration": it, "seed": self.cfg.seed,
                                      "device": self.device, "work_dir": str(work), "out": str(out), "run_name": self.store.run_dir.name,
                                      "tracker_dir": str(self.store.run_dir / "tracker"),
                                      "result_path": str(work / "result.json")}, work, cmd, self.store.run_dir / "train.log")
            metrics, stats = result["metrics"], result["stats"]
        else:
            with self.ui.stage(f"it{it} train ({len(fitted)} pairs)", steps) as go:
                model, tok, metrics, stats = train.train_dpo(
                    model_dir, fitted, self.cfg.train, iteration=it, seed=self.cfg.seed, device=self.device,
                    work_dir=work, on_step=lambda: go(1), run_name=self.store.run_dir.name,
                    tracker_dir=self.store.run_dir / "tracker")
            save_model(model, tok, out)
            del model
            release_memory()  # before the server takes its GPU memory back
        self.policy.resume()  # the next iteration loads M<t+1> (SGLang: a weight update)
        self._record_training(it, model_dir, out, metrics, stats, len(examples), stats["pairs_trained"], len(too_long))

    def _probe(self, it: int, model_dir: str) -> None:
        """M_t's judge on human-labelled pairs (probe.file) and on the frozen iteration-1 responses
        (probe.frozen); eval rows carry iteration t-1, the model iteration that trained M_t."""
        from types import SimpleNamespace

        from mrtk.evals import health
        from mrtk.evals.judge_eval import judge_agreement, pair_credits, predictions
        from mrtk.evals.run import write_results

        target = SimpleNamespace(store=self.store, cfg=self.cfg, iteration=it - 1, version=f"M{it}",
                                 backend=lambda: self._backend(model_dir))
        if self.probe_pairs:
            name = f"probe:{Path(self.cfg.probe.file).stem}"
            res = judge_agreement(target, self.probe_pairs, [], self.t["judge"], n=self.cfg.probe.n, name=name, ui=self.ui)
            previous = self.store.fetch("SELECT * FROM eval_items WHERE eval = ? AND iteration = ?", [name, it - 2])
            if previous:  # the paired change from the previous model, per probe pair
                before = pair_credits(self.probe_pairs, predictions(previous, False)[0])
                ids = sorted(set(before) & set(res["credits"]))
                change = health.paired_difference([res["credits"][i] for i in ids], [before[i] for i in ids])
                numbers = dict(res["numbers"], agreement_change=(change["diff"], change["ci_low"], change["ci_high"], change["n"]))
                write_results(target, name, res["judge"], numbers, {"verdict": health.verdict(change), "template": self.t["judge"].hash})
        if self.cfg.probe.frozen:
            self._probe_frozen(it, model_dir, target)

    def _probe_frozen(self, it: int, model_dir: str, target) -> None:
        import random

        from mrtk.evals import health
        from mrtk.evals.run import write_results
        from mrtk.rows import derive_seed

        pool = self.store.fetch("SELECT * FROM responses WHERE iteration = 1 AND NOT is_duplicate ORDER BY response_id")
        frozen = random.Random(derive_seed(self.cfg.seed, "frozen")).sample(pool, min(self.cfg.probe.frozen, len(pool)))
        ids = [r["response_id"] for r in frozen]
        questions = {p["prompt_id"]: p["text"] for p in self.store.fetch("SELECT prompt_id, text FROM prompts WHERE iteration = 1")}
        key = judge.rejudge_key(self.t["judge"], self.cfg.judge.score_mode, f"M{it}")
        if it > 1:  # iteration 1's own loop judgements are the baseline; later models re-judge the same responses
            have = {r["response_id"] for r in self.store.fetch(
                "SELECT DISTINCT response_id FROM judgements WHERE iteration = 1 AND judgement_id LIKE ?", [f"%/{key}/j%"])}
            todo = [r for r in frozen if r["response_id"] not in have]
            self._chunks(f"it{it} frozen re-judge", todo, self.cfg.judge.n, lambda rows, go: judge.run_judge(
                self._backend(model_dir), rows, questions, self.cfg.judge, self.t["judge"], iteration=1, run_seed=self.cfg.seed,
                model_version=f"M{it}", on_progress=go, source="drift"), "judgements")

        def means(where: str, params: list) -> dict[str, float]:
            got = self.store.fetch(f"SELECT response_id, avg(score) AS s FROM judgements WHERE iteration = 1 AND score IS NOT NULL "
                                   f"AND {where} GROUP BY 1", params)
            return {r["response_id"]: r["s"] for r in got if r["response_id"] in ids}

        base = means("source = 'loop' AND template_hash = ?", [self.t["judge"].hash])
        now = base if it == 1 else means("judgement_id LIKE ?", [f"%/{key}/j%"])
        numbers = health.drift(base, now, {r["response_id"]: r["n_chars"] for r in frozen}, {r["response_id"]: r["prompt_id"] for r in frozen},
                               self.t["judge"].score_range[1])
        write_results(target, "frozen", f"{self.t['judge'].name}:{self.cfg.judge.score_mode}:M{it}", numbers,
                      {"responses": len(ids), "template": self.t["judge"].hash})

    def _prune_models(self, it: int) -> None:
        """runs.keep_models: delete model directories older than the newest one or two, once
        iteration `it` is recorded done; the base model and anything outside the run stay."""
        keep = {"all": None, "last": 2, "none-but-final": 1}[self.cfg.runs.keep_models]
        if keep is None:
            return
        import shutil

        newest = it + 1  # M<it+1> was just trained; a resume starts iteration it+1 from it
        for version in range(1, newest - keep + 1):
            path = self.store.run_dir / "models" / f"M{version}"
            if path.is_dir():
                shutil.rmtree(path)

    def _sft(self) -> None:
        """The optional EFT/SFT step: base model -> M1, recorded as lineage iteration 0."""
        out = self.store.run_dir / "models" / "M1"
        with self.ui.stage("sft", 1) as go:
            model, tok, metrics, stats = sft.train_sft(self.base_model, self.sft_examples, self.cfg.sft, seed=self.cfg.seed,
                                                       device=self.device, work_dir=self.store.run_dir / "tmp" / "sft")
            go(1)
        save_model(model, tok, out)
        del model  # the stage's end releases the memory
        self._record_training(0, self.base_model, out, metrics, stats, stats["examples_in"], stats["examples_trained"],
                              stats["dropped_too_long"])

    def _record_training(self, it, base, out, metrics, stats, n_in, n_trained, n_too_long) -> None:
        with self.store.tx() as con:
            con.execute("DELETE FROM train_metrics WHERE iteration = ?", [it]).fetchall()
            self.store.insert(con, "train_metrics", metrics)
            self.store.insert(con, "lineage", [{
                "iteration": it, "base_model": self._in_run(base), "output_model": self._in_run(out), "pairs_in": n_in,
                "pairs_trained": n_trained, "pairs_dropped_too_long": n_too_long, "stats": stats,
                "finished_at": datetime.now()}])

    # -- persistence helpers ----------------------------------------------------------------
    def _prompts(self, it: int, model_dir: str) -> list[dict]:
        stored = self.store.fetch("SELECT prompt_id, text FROM prompts WHERE iteration = ? ORDER BY prompt_id", [it])
        if stored:
            return stored
        chosen = prompts_for_iteration(self.pool, self.cfg.prompts.per_iteration, it, self.cfg.seed)
        tok = self._tokenizer(model_dir)
        rows = []
        for p in chosen:
            n = len(chat_token_ids(tok, [{"role": "user", "content": p["text"]}], add_generation_prompt=True))
            if n > self.cfg.prompts.max_prompt_tokens:
                raise MrtkError(f"prompt {p['prompt_id']} is {n} tokens, over prompts.max_prompt_tokens={self.cfg.prompts.max_prompt_tokens}; "
                                "shorten or remove it, or raise the limit")
            rows.append(dict(p, iteration=it, n_tokens=n))
        self.store.write("prompts", rows)
        return sorted(({"prompt_id": r["prompt_id"], "text": r["text"]} for r in rows), key=lambda r: r["prompt_id"])

    def _missing(self, rows: list[dict], key: str, sql: str, *params) -> list[dict]:
        have = {r[key] for r in self.store.fetch(sql, list(params))}
        return [r for r in rows if r[key] not in have]

    def _chunks(self, label: str, todo: list, per_item: int, fn, table: str) -> None:
        run_chunks(self.store, self.ui, label, todo, per_item, fn, table, self.cfg.runtime.max_batch_rows)

    def _replace(self, table: str, it: int, rows: list[dict]) -> None:
        with self.store.tx() as con:
            con.execute(f"DELETE FROM {table} WHERE iteration = ?", [it]).fetchall()
            self.store.insert(con, table, rows)

    @contextmanager
    def _stage(self, it: int, name: str):
        """Bookkeeping around a stage body. The body runs even for a finished stage: every body
        computes only what is missing (or recomputes deterministically), so rerunning is safe."""
        if self._done(it, name):
            yield
            return
        t0 = time.time()
        self.store.write("stages", [{"iteration": it, "stage": name, "status": "running", "started_at": datetime.now()}])
        yield
        release_memory()
        with self.store.tx() as con:
            con.execute("UPDATE stages SET status = 'done', finished_at = ?, seconds = ? WHERE iteration = ? AND stage = ?",
                        [datetime.now(), time.time() - t0, it, name]).fetchall()

    def _done(self, it: int, name: str) -> bool:
        return bool(self.store.fetch("SELECT 1 FROM stages WHERE iteration = ? AND stage = ? AND status = 'done'", [it, name]))

    def _in_run(self, path) -> str:
        """Paths inside the run directory are stored relative to it, so a run can be moved."""
        try:
            return str(Path(path).resolve().relative_to(self.store.run_dir.resolve()))
        except ValueError:
            return str(path)

    def _lineage(self, it: int) -> str:
        return model_for(self.store, self.cfg, f"M{it + 1}")

    # -- model handles ----------------------------------------------------------------------
    def _tokenizer(self, model_dir: str):
        from transformers import AutoTokenizer

        if self._tok_for != model_dir:
            self._tok, self._tok_for = AutoTokenizer.from_pretrained(model_dir), model_dir
        return self._tok

    def _backend(self, model_dir: str):
        backend = self.policy.use(model_dir)
        if self.policy.serving is not None and not self._serving_recorded:  # SGLang: versions, whether seeds are honoured
            with self.store.tx() as con:
                con.execute("UPDATE runs SET serving = ?", [json.dumps(self.policy.serving)]).fetchall()
            self._serving_recorded = True
        return backend

    def close(self) -> None:
        """Stop what this loop started (a launched SGLang server); attached servers are left running."""
        self.policy.close()
