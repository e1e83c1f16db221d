"""Train stage: LoRA DPO with TRL on the iteration's pairs, merged into the next model.

The reference model is the iteration's starting model with the adapter disabled (PEFT), so
no second copy sits in memory. TRL drops pairs longer than `max_length` with only a progress
bar to say so (docs/CPU_NOTES.md); we measure every pair first, drop the too-long ones ourselves
with a recorded reason, hand TRL `max_length=None` (nothing left to truncate), and check that
TRL trained on exactly the pairs we handed it. The trainer plumbing it shares with the SFT
stage is in `recipe.py`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from mrtk.config import TrainCfg, at
from mrtk.errors import MrtkError
from mrtk.models import chat_token_ids, load_for_training
from mrtk.prompts import Template, judge_prompt
from mrtk.training import adapters, packed_dpo
from mrtk.training.recipe import (
    accumulation,
    fit_and_merge,
    lora_config,
    merge,
    metrics_callback,
    quiet,
    stop_after_epochs,
    trainer_args,
    use_bf16,
)


def examples_from_pairs(
    kept: list[dict],
    questions: dict[str, str],
    responses: dict[str, dict],
    judgements: dict[str, dict],
    judge_template: Template,
) -> list[dict]:
    """Kept pair rows -> DPO examples in chat format.

    An actor pair (or an anchored one) trains on (user prompt -> chosen / rejected response); a judge
    pair on (the judge prompt filled with the question and the response -> chosen / rejected judgement).
    """
    examples = []
    for p in kept:
        if p["kind"] == "judge":
            prompt = judge_prompt(judge_template, questions[p["prompt_id"]], responses[p["response_id"]]["text"])
            chosen, rejected = judgements[p["chosen_id"]]["text"], judgements[p["rejected_id"]]["text"]
        else:
            prompt = questions[p["prompt_id"]]
            chosen, rejected = responses[p["chosen_id"]]["text"], responses[p["rejected_id"]]["text"]
        examples.append(
            {
                "pair_id": p["pair_id"],
                "kind": p["kind"],
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return examples


def pair_length(tokenizer, example: dict) -> int:
    """Tokens of prompt + the longer completion, with the chat template applied."""
    return max(len(chat_token_ids(tokenizer, example["prompt"] + example[side])) for side in ("chosen", "rejected"))


def fit_examples(examples: list[dict], tokenizer, max_length: int) -> tuple[list[dict], dict[str, str]]:
    """(examples that fit, {pair_id: drop reason} for those longer than `max_length` tokens)."""
    kept, dropped = [], {}
    for ex in examples:
        n = pair_length(tokenizer, ex)
        if n > max_length:
            dropped[ex["pair_id"]] = f"longer_than_max_length_{max_length}_tokens:{n}"
        else:
            kept.append(ex)
    return kept, dropped


ROBUST_MAX = (
    0.49  # TRL's robust loss divides by 1 - 2e (infinite at 0.5); TRL only warns outside [0, 0.5) (dpo_trainer.py:824)
)


def smoothed_losses(loss_types: list[str], eps: float) -> tuple[list[str], list[float] | None, float]:
    """(loss types, loss weights, label smoothing) for TRL that train conservative DPO with smoothing
    `eps`: (1 - eps) A + eps B per pair, A = -logsigmoid(beta D), B = -logsigmoid(-beta D).

    TRL 1.16's `sigmoid` loss ignores label_smoothing (`per_sequence_loss = -F.logsigmoid(self.beta *
    delta_score)`, trl/trainer/dpo_trainer.py:1387-1388); its `robust` loss reads it: ((1 - eps) A -
    eps B) / (1 - 2 eps) (dpo_trainer.py:1428-1431). So each `sigmoid` becomes 2 (1 - eps) x sigmoid
    - (1 - 2 eps) x robust, which is exactly (1 - eps) A + eps B. robust needs eps < 0.5: eps is
    applied capped at ROBUST_MAX. eps 0: the types as given, no weights."""
    if eps <= 0.0 or "sigmoid" not in loss_types:
        return list(loss_types), None, 0.0
    e = min(eps, ROBUST_MAX)
    types, weights = [], []
    for t in loss_types:
        if t == "sigmoid":
            types += ["sigmoid", "robust"]
            weights += [2.0 * (1.0 - e), -(1.0 - 2.0 * e)]
        else:
            types.append(t)
            weights.append(1.0)
    return types, weights, e


def oriented_pairs(examples: list[dict], eps: float) -> tuple[list[dict], float, bool]:
    """(TRL's rows, the smoothing to hand smoothed_losses, reversed?). CREAM's unclamped e above 0.5:
    (1-e) L(chosen, rejected) + e L(rejected, chosen) is the same loss on the reversed pair with 1 - e,
    so the pairs go in reversed (config allows e above 0.5 for the sigmoid loss alone)."""
    reverse = eps > 0.5
    sides = ("rejected", "chosen") if reverse else ("chosen", "rejected")
    rows = [{"prompt": ex["prompt"], "chosen": ex[sides[0]], "rejected": ex[sides[1]]} for ex in examples]
    return rows, 1.0 - eps if reverse else eps, reverse


def planned_steps(n_pairs: int, cfg: TrainCfg, iteration: int) -> int:
    """Optimizer steps TRL will take: ceil(pairs / micro) micro-batches per epoch, accumulated."""
    per_process = math.ceil(n_pairs / cfg.num_processes)  # each process gets its shard of the pairs
    steps = math.ceil(
        math.ceil(per_process / cfg.micro_batch_size)
        / accumulation(cfg.batch_size, cfg.micro_batch_size, cfg.num_processes)
    )
    return steps * at(cfg.epochs, iteration)


def train_dpo(
    model_dir: str,
    examples: list[dict],
    cfg: TrainCfg,
    *,
    iteration: int,
    seed: int,
    device: str,
    work_dir: Path,
    on_step=None,
    run_name: str | None = None,
    tracker_dir: Path | None = None,
    sharded_save_to: Path | None = None,
    lora_to: Path | None = None,
    tag: str = "",
):
    """examples ({pair_id, prompt, chosen, rejected} in chat format) -> (merged model, tokenizer, metric rows, stats).
    `sharded_save_to`: under DeepSpeed ZeRO-3 / FSDP, every rank saves the consolidated model there.
    `tag` names a second DPO of the same iteration in the trackers (`-F<t+1>`, the temporary next model).
    `lora_to`: where the adapter M1 -> M_{t+1} is saved before the merge (sglang.weight_sync: lora)."""
    if cfg.own_step:
        return _train_packed(
            model_dir, examples, cfg, iteration=iteration, seed=seed, device=device, on_step=on_step, lora_to=lora_to
        )
    os.environ.setdefault("TQDM_DISABLE", "1")
    if cfg.report_to and tracker_dir is not None:  # TensorBoardCallback reads its directory from here
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(tracker_dir) / f"dpo_it{iteration}{tag}")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_for_training(model_dir, device)
    epochs = at(cfg.epochs, iteration)
    horizon = cfg.horizon(iteration)  # the paper: a 10-epoch cosine, stopped at 6/4/2/2
    metrics: list[dict] = []
    rows, eps, reverse = oriented_pairs(examples, cfg.label_smoothing)
    loss_types, loss_weights, smoothing = smoothed_losses(list(cfg.loss_type), eps)
    args = DPOConfig(
        **trainer_args(
            work_dir=work_dir,
            micro_batch_size=cfg.micro_batch_size,
            batch_size=cfg.batch_size,
            epochs=horizon,
            lr=cfg.lr,
            seed=seed,
            device=device,
            bf16=use_bf16(cfg.bf16, device),
        ),
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of all steps
        beta=cfg.beta,
        loss_type=loss_types,
        loss_weights=loss_weights,
        precompute_ref_log_probs=epochs > 1 if cfg.precompute_ref_log_probs is None else cfg.precompute_ref_log_probs,
        gradient_checkpointing=cfg.gradient_checkpointing,
        label_smoothing=smoothing,
    )
    if cfg.report_to:
        args.report_to = list(cfg.report_to)
        args.run_name = f"{run_name}-dpo-it{iteration}{tag}" if run_name else None
    data = Dataset.from_list(rows)
    try:
        trainer = quiet(DPOTrainer)(
            model=model,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=lora_config(cfg.lora),
            callbacks=[metrics_callback(metrics, iteration, on_step), stop_after_epochs(epochs)],
        )
    except ValueError as e:
        raise MrtkError(
            f"train: TRL rejected the setup ({' '.join(str(e).split())[:200]}); check the train section"
        ) from None
    if len(trainer.train_dataset) != len(examples):
        raise MrtkError(
            f"train: TRL kept {len(trainer.train_dataset)} of {len(examples)} pairs; refusing to train on a silently shrunk set"
        )
    merged, seconds = fit_and_merge(trainer, None if lora_to is None else lambda m: _save_stack(m, model_dir, lora_to))
    if sharded_save_to is not None:  # gathers ZeRO-3 / FSDP shards into one directory (collective: every rank calls it)
        trainer.save_model(str(sharded_save_to))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(sharded_save_to))
    applied = 1.0 - smoothing if reverse else smoothing
    stats = _stats("trl", len(examples), cfg, epochs, trainer.state.global_step, seconds, args.bf16, applied, reverse)
    return merged, tokenizer, metrics, stats


def _stats(trainer, pairs: int, cfg: TrainCfg, epochs, steps, seconds, bf16, applied, reversed_) -> dict:
    """What a DPO step records in lineage.stats, whichever trainer ran it."""
    return {
        "pairs_trained": pairs,
        "epochs": epochs,
        "steps": steps,
        "train_seconds": seconds,
        "bf16": bf16,
        "label_smoothing": cfg.label_smoothing,
        "label_smoothing_applied": applied,
        "pairs_reversed": reversed_,  # TRL's reward metrics are then the reversed pairs'
        "trainer": trainer,
    }


def _train_packed(model_dir: str, examples: list[dict], cfg: TrainCfg, *, iteration, seed, device, on_step, lora_to):
    """train_dpo through mrtk's own step (packed_dpo.py): the same LoRA, seed, schedule and merge."""
    from peft import get_peft_model
    from transformers import set_seed

    model, tokenizer = load_for_training(model_dir, device)
    set_seed(seed % (2**31))
    peft_model = get_peft_model(model, lora_config(cfg.lora))
    bf16 = use_bf16(cfg.bf16, device)
    t0 = time.time()
    metrics = packed_dpo.fit(
        peft_model, tokenizer, examples, cfg, iteration=iteration, seed=seed, device=device, bf16=bf16, on_step=on_step
    )
    merged = merge(peft_model, None if lora_to is None else lambda m: _save_stack(m, model_dir, lora_to))
    epochs, seconds = at(cfg.epochs, iteration), time.time() - t0
    # (1 - e) A + e B is trained as it is, for any e: nothing capped, nothing reversed
    stats = _stats("mrtk", len(examples), cfg, epochs, len(metrics), seconds, bf16, cfg.label_smoothing, False)
    return merged, tokenizer, metrics, stats


def _save_stack(peft_model, model_dir: str, path: Path) -> None:
    """This iteration's adapter stacked on M_t's (M1 -> M_{t+1}; see adapters.py), saved at `path`."""
    previous = adapters.previous_stack(model_dir)
    new = adapters.trained(peft_model, model_dir if previous is None else previous.base)
    adapters.stacked(previous, new).save(path)


class SemiOnline:
    """train.sync_every_steps: one iteration's DPO over its segments (packed_dpo.Segments) from M_t at
    `model_dir`, or from the state a sync saved (`resume_from`, a synced policy's directory). `sync(out)`
    saves the policy as it stands, merged for generation, with the state a resume goes on from;
    `finish(out)` saves M_{t+1}. Each `train` is one pass over a segment's pairs."""

    STATE = "segments_state"  # the folder inside a synced policy's directory

    def __init__(
        self, model_dir: str, cfg: TrainCfg, *, iteration, seed, device, total: int, resume_from=None, lora_stack=False
    ):
        import torch
        from peft import get_peft_model
        from transformers import set_seed

        model, self.tok = load_for_training(model_dir, device)
        set_seed(seed % (2**31))
        self.cfg, self.bf16, self.t0, self.pairs = cfg, use_bf16(cfg.bf16, device), time.time(), 0
        self.model_dir, self.lora_stack = model_dir, lora_stack
        self.seg = packed_dpo.Segments(
            get_peft_model(model, lora_config(cfg.lora)),
            self.tok,
            cfg,
            iteration=iteration,
            seed=seed,
            device=device,
            bf16=self.bf16,
            total=total,
        )
        if resume_from is not None:
            state = torch.load(Path(resume_from) / self.STATE / "state.pt", weights_only=False)
            self.seg.restore(state)
            self.pairs = state["pairs"]

    def train(self, examples: list[dict], segment: int, on_step=None) -> list[dict]:
        self.pairs += len(examples)
        return self.seg.train(examples, segment, on_step)

    def sync(self, out: Path) -> None:
        """The policy as it stands, merged (a copy: training goes on with the adapter), at `out`, with the
        training state; with `lora_stack`, also the adapter M1 -> this policy (weight_sync: lora)."""
        import copy
        import tempfile

        import torch

        from mrtk.models import save_model

        with tempfile.TemporaryDirectory() as d:
            extra = {self.STATE: Path(d) / "state"} | self._stack(Path(d))
            extra[self.STATE].mkdir()
            torch.save(self.seg.state() | {"pairs": self.pairs}, extra[self.STATE] / "state.pt")
            save_model(copy.deepcopy(self.seg.model).merge_and_unload(), self.tok, out, extra=extra)

    def finish(self, out: Path) -> tuple[list[dict], dict]:
        """M_{t+1} at `out` (with its stacked adapter, as `sync`); (every step's train_metrics row, lineage stats)."""
        import tempfile

        from mrtk.models import save_model

        with tempfile.TemporaryDirectory() as d:
            extra = self._stack(Path(d))
            save_model(merge(self.seg.model), self.tok, out, extra=extra or None)
        rows = self.seg.rows
        seconds, smoothing = time.time() - self.t0, self.cfg.label_smoothing
        return rows, _stats("mrtk", self.pairs, self.cfg, 1, len(rows), seconds, self.bf16, smoothing, False)

    def _stack(self, where: Path) -> dict:
        """{adapters.LORA_DIR: the adapter M1 -> the policy as it stands, saved under `where`} with
        `lora_stack`, else {}."""
        if not self.lora_stack:
            return {}
        _save_stack(self.seg.model, self.model_dir, where / adapters.LORA_DIR)
        return {adapters.LORA_DIR: where / adapters.LORA_DIR}
