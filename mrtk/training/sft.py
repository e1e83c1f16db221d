"""Optional SFT stage before iteration 1 (the paper's EFT step: the seed is first fine-tuned on
judge data built from human rankings; docs/METHOD.md section 1). SFT with TRL (LoRA, merged into M1,
or full fine-tuning), on a cosine schedule that may span more epochs than it trains (the paper:
10 epochs, checkpoint at epoch 5).

The data file is JSONL, one `{"prompt": ..., "completion": ...}` per line. Examples longer
than `sft.max_length` tokens are dropped and counted, never truncated silently.
"""

from __future__ import annotations

import os
from pathlib import Path

from mrtk.config import SftCfg
from mrtk.data import read_jsonl
from mrtk.errors import MrtkError
from mrtk.models import chat_token_ids, load_for_training
from mrtk.training.recipe import (
    fit_and_merge,
    lora_config,
    metrics_callback,
    quiet,
    stop_after_epochs,
    trainer_args,
    use_bf16,
)


def load_sft_examples(path: Path) -> list[dict]:
    examples = []
    for n, obj in read_jsonl(path, "sft.file"):
        if not all(isinstance(obj.get(k), str) and obj[k].strip() for k in ("prompt", "completion")):
            raise MrtkError(f"sft.file {path}: line {n} needs non-empty string fields 'prompt' and 'completion'")
        examples.append(
            {
                "prompt": [{"role": "user", "content": obj["prompt"]}],
                "completion": [{"role": "assistant", "content": obj["completion"]}],
            }
        )
    if not examples:
        raise MrtkError(f"sft.file {path} holds no examples")
    return examples


def train_sft(
    model_dir: str, examples: list[dict], cfg: SftCfg, *, seed: int, device: str, work_dir: Path, on_step=None
):
    """examples -> (merged model, tokenizer, metric rows, stats); metric rows use iteration 0."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_for_training(model_dir, device)
    fitting = [
        ex for ex in examples if len(chat_token_ids(tokenizer, ex["prompt"] + ex["completion"])) <= cfg.max_length
    ]
    if not fitting:
        raise MrtkError(f"sft: every example is longer than sft.max_length={cfg.max_length} tokens; raise it")
    metrics: list[dict] = []
    args = SFTConfig(
        **trainer_args(
            work_dir=work_dir,
            micro_batch_size=cfg.micro_batch_size,
            batch_size=cfg.batch_size,
            epochs=cfg.horizon,
            lr=cfg.lr,
            seed=seed,
            device=device,
            bf16=use_bf16("auto", device),
        ),
        lr_scheduler_type="cosine",
    )
    trainer = quiet(SFTTrainer)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(fitting),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
        callbacks=[metrics_callback(metrics, 0, on_step), stop_after_epochs(cfg.epochs)],
    )
    merged, seconds = fit_and_merge(trainer)
    stats = {
        "examples_in": len(examples),
        "examples_trained": len(fitting),
        "dropped_too_long": len(examples) - len(fitting),
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
    }
    return merged, tokenizer, metrics, stats
