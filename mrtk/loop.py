"""The Meta-Rewarding loop, top to bottom: actor -> judge -> meta-judge -> pairs -> train.

Each stage is a pure function (`stages/`); this file decides what is missing, calls the
stage on it in chunks, and persists after each chunk (through the run's store verbs, so no
SQL here). Resume is therefore a property of the loop: a finished stage is skipped, a
half-finished one regenerates only its missing rows (same ids, same seeds), and the tables
never hold duplicates. The backend (embedded or SGLang) is behind `self.policy`; the loop
never asks which one it has.
"""

from __future__ import annotations

import gc
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mrtk import evaluate, stream
from mrtk.evals import truth
from mrtk.backends import open_policy
from mrtk.data import prompts_for_iteration
from mrtk.errors import MrtkError
from mrtk.hardware import apply_threads, release_memory
from mrtk.inputs import Inputs, prompt_tokens
from mrtk.models import pick_device, save_model, tokenizer_for
from mrtk.plan import switch_costs, switch_lines
from mrtk.rows import TRAINED_PAIR_KINDS, derive_seed, response_kind
from mrtk.semi_online import SemiOnlineSteps
from mrtk.lanes import run_chunks
from mrtk.runs import lifecycle, model_for
from mrtk.present import summary, trackers
from mrtk.stages import actor, consistency, judge, meta_judge, pairs, verifier
from mrtk.training import dpo, sft
from mrtk.store import RunStore
from mrtk.training.worker import train_iteration
from mrtk.ui import QuietUI


@dataclass
class Iteration:
    """What iteration t has so far: each step of Loop.STEPS reads it and adds its own part. A switch's
    step that does not act leaves its part at the neutral value given here."""

    it: int
    model: str  # M_t's directory
    prompts: list[dict]
    questions: dict[str, str]  # prompt id -> text
    smoothing: float  # DPO's label smoothing: train.label_smoothing, or what train.consistency measured
    responses: list[dict] = field(default_factory=list)  # M_t's own K per prompt
    judgements: list[dict] = field(default_factory=list)  # the judge stage's, of `responses`
    picks: dict = field(default_factory=dict)  # prompt -> the response whose judgements the meta-judge battles
    elo: list[dict] = field(default_factory=list)
    anchors: list[dict] | None = None  # M1's samples (pairs.rejected_from: initial)
    future: list[dict] | None = None  # the temporary next model's samples (pairs.chosen_from: future)
    beside: list[dict] = field(default_factory=list)  # M_t's judgements of the anchors and future samples


class Loop(SemiOnlineSteps):
    """One run's loop over its iterations, on `store` with the checked `inputs`. The two seams it is
    handed: `open_policy`, which opens the policy that generates (the backends' opener by default),
    and `train`, the DPO step (model dir, pairs -> the model saved at `out`; in process or under
    accelerate by default)."""

    def __init__(self, store: RunStore, inputs: Inputs, ui=None, *, open_policy=open_policy, train=train_iteration):
        self.store, self.cfg, self.ui = store, inputs.cfg, ui or QuietUI()  # the effective config (inputs.check_inputs)
        self.open_policy, self.train_step = open_policy, train
        self.t = inputs.templates  # actor, judge, meta_judge (bound to the judge's rubric)
        self.pool, self.base_model, self.sft_examples, self.probe_pairs = (
            inputs.pool,
            inputs.model,
            inputs.sft,
            inputs.probe,
        )
        self.heldout = inputs.heldout  # verifiable prompts never trained on (prompts.heldout)

    def run(self) -> None:
        gc.collect()
        gc.freeze()  # what exists by now stays: each stage's collection (release_memory) scans only what the run makes
        try:
            with lifecycle(self.store):  # running -> success | interrupted | error, recorded on the runs row
                self.device = pick_device(self.cfg.runtime.device)
                apply_threads(self.cfg.runtime.threads)
                self.policy = self.open_policy(
                    self.cfg,
                    self.device,
                    self.store.run_dir,
                    tokenizer_for,
                    self.ui.info,
                    on_serving=self.store.record_serving,
                )
                try:
                    self._run()
                finally:
                    self.policy.close()  # a launched SGLang server stops; attached ones keep running
        finally:
            gc.unfreeze()

    def _run(self) -> None:
        self._announce()
        if self.sft_examples and not self.store.stage_done(0, "sft"):
            with self.store.stage(0, "sft", release_memory):
                self._sft()
        for it in range(1, self.cfg.iterations + 1):
            if self.store.stage_done(it, "train"):
                continue
            s = self._begin(it)
            for step in self.SEMI_ONLINE if self.cfg.train.sync_every_steps else self.STEPS:
                step(self, s)
            self._after_iteration(it)
        final = self.cfg.iterations + 1  # the trained model answers the held-out slice too
        if self.heldout and not self.store.stage_done(final, "truth"):
            with self.store.stage(final, "truth", release_memory):
                numbers = self._heldout(final, model_for(self.store, self.cfg, f"M{final}"))
                self.store.record_numbers(truth.EVAL, final, "heldout", numbers, {"prompts": len(self.heldout)})
                self.ui.info(truth.line(f"M{final}", numbers))

    def _begin(self, it: int) -> Iteration:
        model = model_for(self.store, self.cfg, f"M{it}")
        self.ui.info(f"[bold]iteration {it}[/bold]  model M{it}: {model}")
        prompts = self._prompts(it, model)
        questions = {p["prompt_id"]: p["text"] for p in prompts}
        return Iteration(it, model, prompts, questions, self.cfg.train.label_smoothing)

    # -- the steps of an iteration (STEPS, at the end of the class, gives their order) ------------
    def _step_stream(self, s: Iteration) -> None:
        """sglang.stream_stages, on a served backend: steps 1-3's rows made as one stream (stream.py), a
        prompt judged as soon as its samples return, its battles once its judgements are in. The steps
        below find the rows in place and do the rest (the Elo). The verifier's and the pairwise judge's
        iterations run staged."""
        job = self._judging(s.prompts)
        if not self._streams(job, s.model):
            return
        stream.stream_iteration(
            self.store,
            self.ui,
            self.cfg,
            self.t,
            job,
            s.it,
            s.prompts,
            lambda: self.policy.use(s.model),
            meta=s.it in self.cfg.pairs.judge_iterations,
        )

    def _streams(self, job, model: str) -> bool:
        """Whether steps 1-3 stream (sglang.stream_stages, a served backend, a scoring judge)."""
        return (
            self.cfg.backend == "sglang"
            and self.cfg.sglang.stream_stages
            and isinstance(job, judge.Judging)
            and job.scores
            and self.policy.use(model).window() > 0
        )

    def _step_actor(self, s: Iteration) -> None:
        """1. actor: K responses to each prompt."""
        with self.store.stage(s.it, "actor", release_memory):
            answered = self.store.answered_prompts(s.it)
            todo = [p for p in s.prompts if p["prompt_id"] not in answered]
            self._generate(
                s.it,
                s.model,
                "actor",
                todo,
                self.cfg.actor.k,
                "responses",
                actor.run_actor,
                self.cfg.actor,
                self.t.actor,
            )
        s.responses = self.store.responses(s.it)

    def _step_anchors(self, s: Iteration) -> None:
        """pairs.rejected_from: initial, from iteration 2 (in iteration 1 M_t is M1): stage `anchor`, M1's
        K samples of the iteration's prompts (generated once: only prompts without them) and M_t's
        judgements of them (source 'anchor', keyed by M_t)."""
        if self.cfg.pairs.rejected_from != "initial" or s.it == 1:
            return
        with self.store.stage(s.it, "anchor", release_memory):
            m1 = model_for(self.store, self.cfg, "M1")
            self._sample(
                s.it,
                m1,
                "anchor (M1 samples)",
                s.prompts,
                "anchor_responses",
                self.store.anchor_responses,
                kind="anchor",
                version="M1",
            )
            s.anchors = self.store.anchor_responses(s.it)
            s.beside += self._judged_by_mt(s.it, s.model, "anchor", s.anchors, s.questions)

    def _step_judge(self, s: Iteration) -> None:
        """2. judge: N judgements of each distinct response (rewards: verifier, the control arm: its checks)."""
        with self.store.stage(s.it, "judge", release_memory):
            job = self._judging(s.prompts)
            self._judge(s.it, s.model, "judge", job, s.responses, s.questions)
        s.judgements = self.store.loop_judgements(s.it, job.key)

    def _step_probe(self, s: Iteration) -> None:
        """probe.file / probe.frozen: judge health, M_t's judge on human-labelled pairs and a frozen set."""
        if not (self.cfg.probe.file or self.cfg.probe.frozen):
            return
        with self.store.stage(s.it, "probe", release_memory):
            self._probe(s.it, s.model)

    def _step_consistency(self, s: Iteration) -> None:
        """train.consistency: stage `consistency`, M_{t-1}'s judge (M0: the model before SFT) re-scores
        M_t's responses; their agreement sets DPO's label smoothing for the iteration."""
        before = self.cfg.consistency_model(s.it)
        if not before:
            return
        with self.store.stage(s.it, "consistency", release_memory):
            s.smoothing = self._consistency_smoothing(s.it, before, s.questions, s.responses, s.judgements)

    def _step_meta_judge(self, s: Iteration) -> None:
        """3. meta-judge (iterations in pairs.judge_iterations): battles among the judgements of each
        prompt's most disputed response -> Elo."""
        s.picks = self._picks(s.it, s.responses, s.judgements)
        if s.it not in self.cfg.pairs.judge_iterations:
            return
        with self.store.stage(s.it, "meta_judge", release_memory):
            s.elo = self._meta_judge(s.it, s.model, s.picks, s.questions, s.responses, s.judgements)

    def _step_future(self, s: Iteration) -> None:
        """pairs.chosen_from: future: a temporary next model, trained on the anchored pairs, samples the
        prompts; M_t judges its samples, candidates for the chosen side."""
        if self.cfg.pairs.chosen_from != "future":
            return
        with self.store.stage(s.it, "future", release_memory):
            s.future, judged = self._future(s)
        s.beside += judged

    def _step_pairs(self, s: Iteration) -> None:
        """4. pairs: actor pairs from the scores (M_t's own responses, and the anchors and future samples
        where their switches act), judge pairs from the Elo."""
        cfg, it, seed = self.cfg, s.it, self.cfg.seed
        with self.store.stage(it, "pairs", release_memory):
            rows = pairs.actor_pairs(
                s.responses,
                s.judgements + s.beside,
                cfg.pairs,
                iteration=it,
                run_seed=seed,
                anchors=s.anchors,
                future=s.future,
            )
            if it in cfg.pairs.judge_iterations:
                judge_rows = pairs.judge_pairs(
                    s.picks, s.elo, s.judgements, cfg.pairs, cfg.meta_judge, iteration=it, run_seed=seed
                )
                rows += pairs.apply_share_cap(rows, judge_rows, cfg.pairs.judge_share_cap, iteration=it, run_seed=seed)
            self.store.replace_iteration("pairs", it, rows, kinds=TRAINED_PAIR_KINDS)
            if s.future is not None:
                self._record_future_chosen(it, rows)

    def _step_truth(self, s: Iteration) -> None:
        """Ground truth (prompts with IFEval checks, or a held-out slice): verdicts, M_t on the held-out
        slice, the numbers."""
        if not (any(p["checks"] for p in s.prompts) or self.heldout):
            return
        with self.store.stage(s.it, "truth", release_memory):
            self._truth(s.it, s.model, s.prompts, s.responses, s.judgements)

    def _step_train(self, s: Iteration) -> None:
        """5. train: DPO on the kept pairs, M_t -> M_{t+1}."""
        with self.store.stage(s.it, "train", release_memory):
            out = self.store.run_dir / "models" / f"M{s.it + 1}"
            responses = s.responses + (s.anchors or []) + (s.future or [])
            metrics, stats, n_examples, too_long = self._dpo(
                s.it, s.model, self.store.kept_pairs(s.it), s.questions, responses, s.judgements, s.smoothing, out
            )
            self.store.record_training(
                s.it, s.model, out, metrics, stats, n_examples, stats["pairs_trained"], len(too_long)
            )

    # -- the stages' bodies -------------------------------------------------------------------
    def _generate(
        self,
        it: int,
        model: str,
        what: str,
        todo: list,
        per_item: int,
        table: str,
        stage,
        *args,
        iteration: int | None = None,
        group=None,
        version: str | None = None,
        **kw,
    ) -> None:
        """Run a generating stage on `todo` with model M_t (or `version` at `model`), its rows persisted
        to `table` as they finish (in-process backends: a chunk at a time; served ones: the servers'
        window in flight)."""

        def chunk(rows, go):
            return stage(
                self.policy.use(model),
                rows,
                *args,
                iteration=iteration or it,
                run_seed=self.cfg.seed,
                model_version=version or f"M{it}",
                on_progress=go,
                **kw,
            )

        run_chunks(
            self.store,
            self.ui,
            f"it{it} {what}",
            todo,
            per_item,
            chunk,
            table,
            self.cfg.runtime.max_batch_rows,
            lambda: self.policy.use(model),
            group,
        )

    def _judge(
        self,
        it: int,
        model: str,
        label: str,
        job,
        rows: list[dict],
        questions: dict,
        *,
        iteration: int | None = None,
        version: str | None = None,
    ) -> None:
        """`job` (a stages.judge.Judging, or the verifier's) on what it has not judged of `rows` (ids under
        its key, in iteration `iteration`, default t), with `model`; a re-judgement's rows carry its model
        version, the loop's own `version` (default M_t)."""
        stored = self.store.judged_ids(job.table, iteration or it, job.key)
        version = job.model_version if getattr(job, "source", "loop") != "loop" else version
        self._generate(
            it,
            model,
            label,
            job.missing(rows, stored),
            job.n,
            job.table,
            job.run,
            questions,
            iteration=iteration,
            version=version,
        )

    def _meta_judge(
        self, it: int, model: str, picks: dict, questions: dict, responses: list[dict], judgements: list[dict]
    ) -> list[dict]:
        """The battles of the picks' judgements not yet fought (by M_t), then the Elo over every
        meta-judgement of the iteration, written."""
        self._battles(it, model, picks, questions, responses, judgements, None)
        elo = self._elo(self.store.meta_judgements(it, self.t.meta_judge.hash), judgements)
        self.store.replace_iteration("elo", it, elo)
        return elo

    def _battles(
        self,
        it: int,
        model: str,
        picks: dict,
        questions: dict,
        responses: list[dict],
        judgements: list[dict],
        version,
        label: str = "meta-judge",
    ) -> None:
        """The battles among the judgements of each pick not yet fought, as rows of model `version` (None: M_t)."""
        fights = [
            f
            for rid, _ in picks.values()
            if rid
            for f in meta_judge.battles([j for j in judgements if j["response_id"] == rid])
        ]
        seen = self.store.meta_judged(it, self.t.meta_judge.hash)
        todo = [f for f in fights if (f[0]["judgement_id"], f[1]["judgement_id"]) not in seen]
        texts = {r["response_id"]: r["text"] for r in responses}
        self._generate(
            it,
            model,
            label,
            todo,
            1,
            "meta_judgements",
            meta_judge.run_meta_judge,
            questions,
            texts,
            self.cfg.meta_judge,
            self.t.meta_judge,
            group=meta_judge.battle_group,
            version=version,
        )

    def _picks(self, it: int, responses: list[dict], judgements: list[dict]) -> dict:
        """Per prompt, the response whose judgements the meta-judge battles (section 4's rule 1)."""
        return meta_judge.pick_responses(
            responses,
            judgements,
            run_seed=self.cfg.seed,
            iteration=it,
            require_variance=self.cfg.meta_judge.require_variance,
        )

    def _elo(self, meta_rows: list[dict], judgements: list[dict]) -> list[dict]:
        mj = self.cfg.meta_judge
        return meta_judge.elo_ratings(meta_rows, judgements, mj.position_weights, mj.elo_l2, mj.verdict)

    def _judging(self, prompts: list[dict]):
        """The judge stage's job: the self-judge (the method), or the IFEval checks (rewards: verifier, a control)."""
        if self.cfg.rewards == "verifier":
            return verifier.VerifierJudging(prompts)
        return judge.Judging(self.t.judge, self.cfg.judge)

    def _truth(self, it: int, model: str, prompts: list[dict], responses: list[dict], judgements: list[dict]) -> None:
        """Iteration t against the truth: each checked response's verdict (string work), M_t on the
        held-out slice, and the numbers (evals/truth.py) as eval `truth` rows of iteration t."""
        checked = [p for p in prompts if p["checks"]]
        self.store.write("verdicts", verifier.verdict_rows(responses, "loop", checked))
        numbers = truth.iteration_numbers(
            self.store.verdicts(it, "loop"),
            judgements,
            self.store.meta_judgements(it, self.t.meta_judge.hash),
            self.store.kept_pairs(it, "actor"),
        )
        if self.heldout:
            numbers |= self._heldout(it, model)
        who = verifier.KEY if self.cfg.rewards == "verifier" else self.t.judge.name
        self.store.record_numbers(truth.EVAL, it, who, numbers, {"prompts": len(checked), "heldout": len(self.heldout)})
        self.ui.info(truth.line(f"M{it}", numbers))

    def _heldout(self, it: int, model: str) -> dict:
        """M_it's answers to the held-out slice (only the missing ones; seeds shared by every model), their
        verdicts, and the slice's numbers with the paired change from M1 and M_{it-1}."""
        self._sample(
            it, model, "held-out", self.heldout, "heldout_responses", self.store.heldout_responses, kind="heldout"
        )
        self.store.write("verdicts", verifier.verdict_rows(self.store.heldout_responses(it), "heldout", self.heldout))
        now = self.store.verdicts(it, "heldout")
        earlier = it > 1
        return truth.heldout_numbers(
            now,
            self.store.verdicts(1, "heldout") if earlier else None,
            self.store.verdicts(it - 1, "heldout") if earlier else None,
        )

    def _sample(self, it: int, model: str, label: str, prompts: list[dict], table: str, stored, **kw) -> None:
        """K samples of each of `prompts` not yet in `table` (`stored(it)` reads what is there), by
        the actor stage (`kind`: anchor or heldout, with their own ids and seeds)."""
        have = {r["prompt_id"] for r in stored(it)}
        todo = [p for p in prompts if p["prompt_id"] not in have]
        self._generate(
            it, model, label, todo, self.cfg.actor.k, table, actor.run_actor, self.cfg.actor, self.t.actor, **kw
        )

    def _judged_by_mt(self, it: int, model: str, source: str, rows: list[dict], questions: dict) -> list[dict]:
        """M_t's judgements of responses that are not M_t's own (anchors, the temporary model's samples),
        as `source` rows keyed by M_t: the missing ones judged, then all of them read back."""
        job = judge.Judging(self.t.judge, self.cfg.judge, source=source, model_version=f"M{it}")
        self._judge(it, model, f"{source} judge", job, rows, questions)
        ids = {r["response_id"] for r in rows}
        return [j for j in self.store.keyed_judgements(it, job.key) if j["response_id"] in ids]

    def _future(self, s: Iteration) -> tuple[list[dict], list[dict]]:
        """Stage `future`'s body: the anchored pairs (kind
        `anchored`, written for the record) train a temporary next model F<t+1> from M_t by the
        iteration's own DPO recipe; it samples K responses to each prompt (only prompts without them;
        their own ids and seeds) and M_t's judge scores them (source 'future'). The temporary model is
        deleted once its samples are in. Returns (samples, their judgements)."""
        it, model, prompts, questions, anchors = s.it, s.model, s.prompts, s.questions, s.anchors
        responses, judgements = s.responses, s.judgements + s.beside  # M_t's and the anchors' (M_t judged both)
        version = f"F{it + 1}"
        temp = self.store.run_dir / "models" / version
        have = {r["prompt_id"] for r in self.store.future_responses(it)}
        if any(p["prompt_id"] not in have for p in prompts):
            if not temp.is_dir():  # a resume after its samples began reuses the saved temporary model
                anchored = pairs.actor_pairs(
                    responses,
                    judgements,
                    self.cfg.pairs,
                    iteration=it,
                    run_seed=self.cfg.seed,
                    anchors=anchors,
                    kind="anchored",
                )
                self.store.replace_iteration("pairs", it, anchored, kinds=("anchored",))
                metrics, stats, _, _ = self._dpo(
                    it,
                    model,
                    self.store.kept_pairs(it, "anchored"),
                    questions,
                    responses + (anchors or []),
                    judgements,
                    s.smoothing,
                    temp,
                )
                losses = [m["loss"] for m in metrics if m.get("loss") is not None]
                self.store.record_numbers(
                    "future",
                    it,
                    "train",
                    {
                        "pairs_trained": (stats["pairs_trained"], None, None, stats["pairs_trained"]),
                        "loss_first": (losses[0] if losses else None, None, None, len(losses)),
                        "loss_last": (losses[-1] if losses else None, None, None, len(losses)),
                    },
                    {"model": version, "base": model},
                )
            self._sample(
                it,
                str(temp),
                f"future ({version} samples)",
                prompts,
                "future_responses",
                self.store.future_responses,
                kind="future",
                version=version,
            )
        future = self.store.future_responses(it)
        future_judgements = self._judged_by_mt(it, model, "future", future, questions)
        shutil.rmtree(temp, ignore_errors=True)
        return future, future_judgements

    def _record_future_chosen(self, it: int, rows: list[dict]) -> None:
        """How many kept actor pairs take their chosen side from the temporary model (eval `future`)."""
        kept = [r for r in rows if r["kind"] == "actor" and r["status"] == "kept"]
        ahead = sum(response_kind(r["chosen_id"]) == "future" for r in kept)
        self.store.record_numbers(
            "future",
            it,
            "chosen",
            {"future_chosen_share": (ahead / len(kept) if kept else None, None, None, len(kept))},
            {"future_chosen": ahead},
        )

    def _consistency_smoothing(
        self, it: int, before: str, questions: dict, responses: list[dict], judgements: list[dict]
    ) -> float:
        job = judge.Judging(self.t.judge, self.cfg.judge, source="consistency", model_version=before)
        self._judge(
            it, model_for(self.store, self.cfg, before), f"consistency re-judge ({before})", job, responses, questions
        )
        live = [r for r in responses if not r["is_duplicate"]]
        ids = [r["response_id"] for r in live]
        now = {rid: mean for rid, (mean, _) in pairs.rewards(judgements).items()}
        per_prompt = consistency.prompt_consistency(
            now,
            self.store.mean_scores(ids, it=it, key=job.key),
            {r["response_id"]: r["prompt_id"] for r in live},
            self.cfg.train.consistency_ties,
        )
        numbers = consistency.summary(per_prompt, self.cfg.train.consistency_clamp)
        self.store.record_numbers(
            "consistency",
            it,
            f"{self.t.judge.name}:{before}",
            numbers,
            {
                "template": self.t.judge.hash,
                "prompts": len({r["prompt_id"] for r in live}),
                "ties": self.cfg.train.consistency_ties,
                "clamp": self.cfg.train.consistency_clamp,
            },
        )
        smoothing = numbers["label_smoothing"][0]
        self.ui.info(
            f"consistency with {before}: {numbers['consistency'][0] if per_prompt else float('nan'):.3f} over "
            f"{len(per_prompt)} prompts -> DPO label smoothing {smoothing:.3f}"
        )
        return smoothing

    def _dpo(
        self,
        it: int,
        model: str,
        kept: list[dict],
        questions: dict,
        responses: list[dict],
        judgements: list[dict],
        smoothing: float,
        out: Path,
    ) -> tuple[list[dict], dict, int, dict]:
        """DPO from `model` on the `kept` pair rows (those too long for train.max_length marked dropped),
        saved at `out`; returns (per-step metrics, stats, examples, the too-long pairs)."""
        examples = dpo.examples_from_pairs(
            kept,
            questions,
            {r["response_id"]: r for r in responses},
            {j["judgement_id"]: j for j in judgements},
            self.t.judge,
        )
        fitted, too_long = dpo.fit_examples(examples, tokenizer_for(model), self.cfg.train.max_length)
        self.store.drop_pairs(too_long)
        if not fitted:
            raise MrtkError(
                f"iteration {it}: no preference pairs to train {out.name} on (see: mrtk query "
                "'select kind, reason, count(*) from pairs group by all'); raise prompts.per_iteration or actor.k, or lower pairs.rho"
            )
        self.policy.release()  # the generation copy (embedded) or the server's GPU memory (SGLang) goes to DPO
        train_cfg = self.cfg.train.model_copy(update={"label_smoothing": smoothing})
        metrics, stats = self.train_step(
            model,
            fitted,
            train_cfg,
            iteration=it,
            seed=self.cfg.seed,
            device=self.device,
            run_dir=self.store.run_dir,
            out=out,
            ui=self.ui,
            lora_stack=self.cfg.backend == "sglang" and self.cfg.sglang.weight_sync == "lora",
        )
        self.policy.resume()  # the next iteration loads M<t+1> (SGLang: a weight update)
        return metrics, stats, len(examples), too_long

    def _sft(self) -> None:
        """The optional EFT/SFT step: base model -> M1, recorded as lineage iteration 0."""
        out = self.store.run_dir / "models" / "M1"
        with self.ui.stage("sft", 1) as go:
            model, tok, metrics, stats = sft.train_sft(
                self.base_model,
                self.sft_examples,
                self.cfg.sft,
                seed=self.cfg.seed,
                device=self.device,
                work_dir=self.store.run_dir / "tmp" / "sft",
            )
            go(1)
        save_model(model, tok, out)
        del model  # the stage's end releases the memory
        self.store.record_training(
            0,
            self.base_model,
            out,
            metrics,
            stats,
            stats["examples_in"],
            stats["examples_trained"],
            stats["dropped_too_long"],
        )

    def _probe(self, it: int, model: str) -> None:
        """M_t's judge on human-labelled pairs (probe.file) and on the frozen iteration-1 responses
        (probe.frozen); eval rows carry iteration t-1, the model iteration that trained M_t."""
        from mrtk.evals import probe

        if self.probe_pairs:  # judged through the evals' one judging path, on the loop's own policy
            name = f"probe:{Path(self.cfg.probe.file).stem}"
            res = evaluate.judge_agreement(
                self.store,
                self.cfg,
                it - 1,
                f"M{it}",
                lambda: self.policy.use(model),
                self.probe_pairs,
                [],
                self.t.judge,
                n=self.cfg.probe.n,
                name=name,
                ui=self.ui,
            )
            probe.human_agreement_change(self.store, name, it - 1, self.probe_pairs, res)
        if self.cfg.probe.frozen:
            pool = [r for r in self.store.responses(1) if not r["is_duplicate"]]
            frozen = random.Random(derive_seed(self.cfg.seed, "frozen")).sample(
                pool, min(self.cfg.probe.frozen, len(pool))
            )
            job = judge.Judging(self.t.judge, self.cfg.judge, source="drift", model_version=f"M{it}")
            if it > 1:  # iteration 1's own loop judgements are the baseline; later models re-judge the same responses
                questions = {p["prompt_id"]: p["text"] for p in self.store.prompts(1)}
                self._judge(it, model, "frozen re-judge", job, frozen, questions, iteration=1)
            probe.record_drift(
                self.store,
                it - 1,
                f"M{it}",
                frozen,
                self.t.judge,
                job.key if it > 1 else None,
                self.cfg.judge.score_mode,
            )

    # -- around the stages ----------------------------------------------------------------------
    def _announce(self) -> None:
        """The generation dtype (auto decides per machine) and what judge health costs, before it is spent."""
        self.store.record_templates(self.t.all())
        dtype, why = self.policy.generation_dtype()
        self.store.record_generation_dtype(dtype, why)
        self.ui.info(f"generation dtype: {dtype or 'server'} ({why})")
        self.ui.info("beyond the paper: " + "; ".join(switch_lines(self.cfg)))
        for t in range(1, self.cfg.iterations + 1):
            if costs := switch_costs(self.cfg, t, min(self.cfg.prompts.per_iteration, len(self.pool))):
                self.ui.info(f"iteration {t} beyond the paper: " + "; ".join(costs))
        p, n = self.cfg.probe, self.cfg.probe.n or self.cfg.judge.n
        if self.probe_pairs or p.frozen:
            self.ui.info(
                f"judge health: {2 * len(self.probe_pairs) * n} judge calls per iteration on {len(self.probe_pairs)} human pairs"
                + (
                    f", {p.frozen * self.cfg.judge.n} per iteration from 2 on {p.frozen} frozen responses"
                    if p.frozen
                    else ""
                )
            )

    def _prompts(self, it: int, model: str) -> list[dict]:
        """Iteration t's prompts: stored ones on a resume, else the t-th seeded slice of the pool."""
        stored = self.store.prompts(it)
        if stored:
            return stored
        chosen = prompts_for_iteration(self.pool, self.cfg.prompts.per_iteration, it, self.cfg.seed)
        tok = tokenizer_for(model)
        rows = [
            dict(p, iteration=it, n_tokens=prompt_tokens(tok, p, self.cfg.prompts.max_prompt_tokens)) for p in chosen
        ]
        self.store.write("prompts", rows)
        return self.store.prompts(it)

    def _after_iteration(self, it: int) -> None:
        """Prune old models (runs.keep_models), log the loop's numbers to trackers, print the summary."""
        for version in self.cfg.prunable(it):
            path = self.store.run_dir / "models" / version
            if path.is_dir():
                shutil.rmtree(path)
        if self.cfg.train.report_to:
            trackers.log_loop(
                self.cfg.train.report_to,
                self.store.run_dir,
                self.store.run_dir.name,
                it,
                trackers.loop_metrics(self.store, it),
            )
        self.ui.table(summary.iteration_table(self.store, it))

    # One iteration, in order: the method's five stages (1-5) and, between them, the steps beyond the
    # paper, each gated inside its own step (one that does not act returns at once, leaving the
    # Iteration's neutral values). A new switch is its step and a line here; _run does not change.
    STEPS = (
        _step_stream,  # served backends: 1-3 below as one stream, each prompt through them as soon as it can
        _step_actor,  # 1. K responses to each prompt
        _step_anchors,  # pairs.rejected_from: initial -- M1's samples, judged by M_t
        _step_judge,  # 2. N judgements of each distinct response
        _step_probe,  # probe.*: M_t's judge on human pairs and a frozen set
        _step_consistency,  # train.consistency: M_{t-1}'s judge re-scores M_t's responses -> label smoothing
        _step_meta_judge,  # 3. battles among the judgements of each prompt's picked response -> Elo
        _step_future,  # pairs.chosen_from: future -- a temporary next model's samples, judged by M_t
        _step_pairs,  # 4. actor pairs from the scores, judge pairs from the Elo
        _step_truth,  # IFEval checks / a held-out slice: verdicts and the truth numbers
        _step_train,  # 5. DPO on the kept pairs: M_t -> M_{t+1}
    )
    # train.sync_every_steps: 1-5 in segments, the policy synced between them; then what reads the whole iteration
    SEMI_ONLINE = (SemiOnlineSteps._step_semi_online, _step_probe, _step_truth)


def run_locked(store: RunStore, inputs: Inputs, ui=None, say: str = "", **loop_kw) -> None:
    """Run (or finish) the loop on a run directory while holding its writer lock: what `mrtk run`
    and each study variant do. `say`: a line for the UI once the lock is held (a run another
    process writes is refused in one line, before it). `loop_kw`: the loop's seams (open_policy, train)."""
    from mrtk.runs import WriterLock

    with WriterLock(store.run_dir):
        if say and ui is not None:
            ui.info(say)
        Loop(store, inputs, ui, **loop_kw).run()  # records how the run ended (runs.status), then re-raises
