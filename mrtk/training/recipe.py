"""What the two trainers (DPO in training/dpo.py, SFT in training/sft.py) share: TRL's
TrainingArguments, the LoRA config, the metrics callback, bf16's choice, stopping a longer
schedule early, and folding LoRA into the weights after training."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mrtk import faults
from mrtk.errors import MrtkError


def world_size() -> int:
    """Processes training together (`accelerate launch` sets WORLD_SIZE); 1 in-process."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def accumulation(batch_size: int, micro_batch_size: int, processes: int) -> int:
    """Gradient accumulation steps so that micro x accumulation x processes = the global batch."""
    per_step = micro_batch_size * processes
    if batch_size < per_step:
        raise MrtkError(
            f"train.batch_size {batch_size} is below micro_batch_size x processes = {micro_batch_size} x {processes}; "
            "raise batch_size or lower micro_batch_size"
        )
    return batch_size // per_step


def trainer_args(
    *,
    work_dir: Path,
    micro_batch_size: int,
    batch_size: int,
    epochs: int,
    lr: float,
    seed: int,
    device: str,
    bf16: bool,
) -> dict:
    """TrainingArguments both trainers share: CPU-aware, quiet, nothing saved (we save the merged model).
    The global batch is `batch_size` whatever the number of processes (WORLD_SIZE)."""
    return dict(
        output_dir=str(work_dir),
        per_device_train_batch_size=micro_batch_size,
        gradient_accumulation_steps=accumulation(batch_size, micro_batch_size, world_size()),
        num_train_epochs=epochs,
        learning_rate=lr,
        max_length=None,
        bf16=bf16,
        use_cpu=device == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=seed % (2**31),
        data_seed=seed % (2**31),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def quiet(trainer_cls):
    """Silence progress bars and the per-step log printer; our callback records the metrics."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    return trainer_cls


def fit_and_merge(trainer, before_merge=None):
    """Train, then fold a LoRA adapter into the weights: the next model is a plain model (a full
    fine-tune already is one). `before_merge(model)` sees the trained model while its adapter is
    still apart (the stacked adapter for servers that load adapters is read there)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    t0 = time.time()
    trainer.train()
    return merge(trainer.model, before_merge), time.time() - t0


def merge(model, before_merge=None):
    """The trained model as a plain model: a LoRA adapter folded into its weights (`before_merge(model)`
    first sees it with the adapter apart); a full fine-tune already is one."""
    if before_merge is not None:
        before_merge(model)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    faults.point("train.merge")
    merged.eval()
    return merged


def lora_config(lora):
    """PEFT's LoraConfig, or None for full fine-tuning (`lora: null`): then TRL keeps a frozen
    copy of the starting model as the DPO reference, or none with precompute_ref_log_probs."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
        task_type="CAUSAL_LM",
    )


def metrics_callback(sink: list[dict], iteration: int, on_step=None):
    """A TrainerCallback appending one train_metrics row per logging step to `sink`."""
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                record_step(sink, iteration, state.global_step, logs, on_step)

    return Record()


def record_step(sink: list[dict], iteration: int, step: int, logs: dict, on_step=None) -> None:
    """Append one train_metrics row, from a step's logs under TRL's names (`rewards/margins`, ...),
    to `sink`; then the step's fault point and `on_step`. Both DPO trainers record through it."""
    sink.append(
        {
            "iteration": iteration,
            "step": step,
            "epoch": logs.get("epoch"),
            "loss": logs.get("loss"),
            "reward_margin": logs.get("rewards/margins"),
            "reward_accuracy": logs.get("rewards/accuracies"),
            "reward_chosen": logs.get("rewards/chosen"),
            "reward_rejected": logs.get("rewards/rejected"),
            "logp_chosen": logs.get("logps/chosen"),
            "logp_rejected": logs.get("logps/rejected"),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "logged_at": time.time(),
        }
    )
    faults.point("train.step")
    if on_step:
        on_step()


def stop_after_epochs(epochs: int):
    """Ends training after `epochs` although the schedule spans more (train.schedule_epochs)."""
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if state.epoch is not None and state.epoch >= epochs - 1e-6:
                control.should_training_stop = True

    return Stop()


def use_bf16(choice: str, device: str) -> bool:
    import torch

    if choice != "auto":
        return choice == "on"
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    from mrtk.hardware import cpu_bf16_capable

    return cpu_bf16_capable()
