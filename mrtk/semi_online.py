"""train.sync_every_steps, the loop's semi-online steps (beyond the paper; docs/METHOD.md section 8): an
iteration in segments, each generated, judged, battled and paired by the policy as it stands and then
trained on by mrtk's own DPO step held open (training/dpo.SemiOnline), the policy synced before the next
segment. A mixin of `loop.Loop`, whose helpers (_generate, _judge, _battles, _elo, _picks, _streams) it calls:
its own room, so loop.py still reads the paper's iteration top to bottom.
"""

from __future__ import annotations

import shutil

from mrtk import stream
from mrtk.hardware import release_memory
from mrtk.models import tokenizer_for
from mrtk.rows import TRAINED_PAIR_KINDS, sync_version
from mrtk.stages import actor, pairs
from mrtk.training import dpo


class SemiOnlineSteps:
    def _step_semi_online(self, s) -> None:
        """train.sync_every_steps (beyond the paper; METHOD section 8): the iteration's prompts in segments
        of S x batch_size, each generated, judged, battled and paired by the policy as it stands (rows of
        version M<t>, then M<t>.<j> after j syncs), then trained on; the adapter and its AdamW state carry
        over (dpo.SemiOnline) and the policy is synced before the next segment. A resume goes on from the
        last sync saved (models/M<t>.<j>, with the training state); earlier segments' pairs are recomputed
        from their rows, as they were. Stage rows: actor/judge/meta_judge/pairs/train + " s<j>", then train."""
        cfg, it = self.cfg, s.it
        size = cfg.train.sync_every_steps * cfg.train.batch_size
        segments = [s.prompts[i : i + size] for i in range(0, len(s.prompts), size)]
        models = self.store.run_dir / "models"
        start = max((j for j in range(1, len(segments)) if (models / sync_version(it, j)).is_dir()), default=0)
        meta = it in cfg.pairs.judge_iterations
        total = len(segments) * cfg.train.sync_every_steps * (2 if meta else 1)  # at most a pair of each kind a prompt
        self.policy.release()
        session = dpo.SemiOnline(
            s.model,
            cfg.train,
            iteration=it,
            seed=cfg.seed,
            device=self.device,
            total=total,
            resume_from=models / sync_version(it, start) if start else None,
            lora_stack=cfg.backend == "sglang" and cfg.sglang.weight_sync == "lora",
        )
        self.policy.resume()
        rows, elo, too_long, n_examples = [], [], {}, 0
        for j, segment in enumerate(segments):
            version = sync_version(it, j)
            model = s.model if j == 0 else str(models / version)
            new = {p["prompt_id"] for p in segment}
            if j >= start:
                self._segment_generate(s, j, segment, model, version, meta)
            with self.store.stage(it, f"pairs s{j}"):
                seen = {p["prompt_id"] for p in s.prompts[: (j + 1) * size]}  # the segments so far
                got, got_elo, responses, judgements = self._segment_pairs(s, new, seen, meta)
                rows, elo = rows + got, elo + got_elo
                self.store.replace_iteration("elo", it, elo)
                self.store.replace_iteration("pairs", it, rows, kinds=TRAINED_PAIR_KINDS)
                kept = [r for r in self.store.kept_pairs(it) if r["prompt_id"] in new]
                examples = dpo.examples_from_pairs(
                    kept,
                    s.questions,
                    {r["response_id"]: r for r in responses},
                    {x["judgement_id"]: x for x in judgements},
                    self.t.judge,
                )
                fitted, dropped = dpo.fit_examples(examples, tokenizer_for(s.model), cfg.train.max_length)
                self.store.drop_pairs(dropped)
                too_long, n_examples = too_long | dropped, n_examples + len(examples)
            if j < start:  # trained before the sync a resume goes on from
                continue
            with self.store.stage(it, f"train s{j}"):
                self.policy.release()
                session.train(fitted, j)
                if j + 1 < len(segments):
                    session.sync(models / sync_version(it, j + 1))
                self.policy.resume()
        with self.store.stage(it, "train"):
            out = models / f"M{it + 1}"
            metrics, stats = session.finish(out)
            self.store.record_training(
                it, s.model, out, metrics, stats, n_examples, stats["pairs_trained"], len(too_long)
            )
        for j in range(1, len(segments)):
            shutil.rmtree(models / sync_version(it, j), ignore_errors=True)  # M<t+1> is all a later step needs
        s.responses = self.store.responses(it)
        s.judgements = self.store.loop_judgements(it, self._judging(s.prompts).key)

    def _segment_generate(self, s, j: int, segment: list[dict], model: str, version: str, meta: bool) -> None:
        """Segment j's actor, judge and (judge iterations) meta-judge rows, by `model` as `version`: streamed on
        a served backend (stream.py), else one stage after another."""
        it, cfg, tag = s.it, self.cfg, f" s{j}"
        job = self._judging(s.prompts)
        questions = {p["prompt_id"]: p["text"] for p in segment}
        if self._streams(job, model):
            stream.stream_iteration(
                self.store,
                self.ui,
                cfg,
                self.t,
                job,
                it,
                segment,
                lambda: self.policy.use(model),
                meta=meta,
                version=version,
                tag=tag,
            )
        with self.store.stage(it, "actor" + tag, release_memory):
            answered = self.store.answered_prompts(it)
            todo = [p for p in segment if p["prompt_id"] not in answered]
            self._generate(
                it,
                model,
                "actor" + tag,
                todo,
                cfg.actor.k,
                "responses",
                actor.run_actor,
                cfg.actor,
                self.t.actor,
                version=version,
            )
        ids = {p["prompt_id"] for p in segment}
        responses = self.store.responses(it, ids)
        with self.store.stage(it, "judge" + tag, release_memory):
            self._judge(it, model, "judge" + tag, job, responses, questions, version=version)
        if not meta:
            return
        judgements = self.store.loop_judgements(it, job.key, ids)
        picks = self._picks(it, responses, judgements)
        with self.store.stage(it, "meta_judge" + tag, release_memory):
            self._battles(it, model, picks, questions, responses, judgements, version, "meta-judge" + tag)

    def _segment_pairs(self, s, new: set[str], seen: set[str], meta: bool) -> tuple[list, list, list, list]:
        """(pairs, Elo rows, responses, judgements) of the prompts in `new`, from their rows; the Elo is
        fitted over the battles of every prompt in `seen` (the segments so far: position weights count
        what had been fought)."""
        cfg, it = self.cfg, s.it
        job = self._judging(s.prompts)
        responses = self.store.responses(it, new)
        judged = self.store.loop_judgements(it, job.key, seen if meta else new)
        judgements = [x for x in judged if x["prompt_id"] in new]
        rows = pairs.actor_pairs(responses, judgements, cfg.pairs, iteration=it, run_seed=cfg.seed)
        if not meta:
            return rows, [], responses, judgements
        fought = self.store.meta_judgements(it, self.t.meta_judge.hash, seen)
        elo = [e for e in self._elo(fought, judged) if e["prompt_id"] in new]
        picks = self._picks(it, responses, judgements)
        judge_rows = pairs.judge_pairs(
            picks, elo, judgements, cfg.pairs, cfg.meta_judge, iteration=it, run_seed=cfg.seed
        )
        cap = pairs.apply_share_cap(rows, judge_rows, cfg.pairs.judge_share_cap, iteration=it, run_seed=cfg.seed)
        return rows + cap, elo, responses, judgements
