"""Optional SFT stage before iteration 1 (the paper's EFT step: the seed is first fine-tuned on
judge data built from human rankings; METHOD.md section 1). LoRA SFT with TRL, merged into M1.

The data file is JSONL, one `{"prompt": ..., "completion": ...}` per line. Examples longer
than `sft.max_length` tokens are dropped and counted, never truncated silently.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mrtk.config import SftCfg
from mrtk.data import read_jsonl
from mrtk.errors import MrtkError
from mrtk.stages.train import use_bf16, lora_config, metrics_callback, quiet_libraries


def load_sft_examples(path: Path) -> list[dict]:
    examples = []
    for n, obj in read_jsonl(path, "sft.file"):
        if not all(isinstance(obj.get(k), str) and obj[k].strip() for k in ("prompt", "completion")):
            raise MrtkError(f"sft.file {path}: line {n} needs non-empty string fields 'prompt' and 'completion'")
        examples.append({"prompt": [{"role": "user", "content": obj["prompt"]}],
                         "completion": [{"role": "assistant", "content": obj["completion"]}]})
    if not examples:
        raise MrtkError(f"sft.file {path} holds no examples")
    return examples


def train_sft(model_dir: str, examples: list[dict], cfg: SftCfg, *, seed: int, device: str, work_dir: Path, on_step=None):
    """examples -> (merged model, tokenizer, metric rows, stats); metric rows use iteration 0."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    fitting = []
    for ex in examples:
        text = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= cfg.max_length:
            fitting.append(ex)
    if not fitting:
        raise MrtkError(f"sft: every example is longer than sft.max_length={cfg.max_length} tokens; raise it")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    metrics: list[dict] = []
    args = SFTConfig(
        output_dir=str(work_dir), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=max(1, cfg.batch_size // cfg.micro_batch_size), num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", max_length=None, bf16=use_bf16("auto", device),
        use_cpu=device == "cpu", logging_steps=1, save_strategy="no", report_to=[], seed=seed % (2**31),
        disable_tqdm=True, dataloader_num_workers=0,
    )
    quiet_libraries()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(fitting), processing_class=tokenizer,
                         peft_config=lora_config(cfg.lora), callbacks=[metrics_callback(metrics, 0, on_step)])
    trainer.remove_callback(PrinterCallback)
    t0 = time.time()
    trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.eval()
    stats = {"examples_in": len(examples), "examples_trained": len(fitting), "dropped_too_long": len(examples) - len(fitting),
             "steps": trainer.state.global_step, "train_seconds": time.time() - t0}
    return merged, tokenizer, metrics, stats
