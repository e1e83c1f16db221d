"""A scripted policy and DPO step for in-process orchestration tests (`Loop(..., open_policy=,
train=)`): no model runs, so a two-iteration run takes a second, and every text and choice
probability is a pure function of (model directory, prompt, seed), like a seeded real model.

What it is not: a model. Stages, parsing, DuckDB, resume and the loop's bookkeeping are the real
code; the model calls and DPO are replaced. The real model runs in the tests marked `slow`.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path

from mrtk import faults
from mrtk.backends.base import Generation

WORDS = (
    "the",
    "answer",
    "is",
    "clear",
    "because",
    "it",
    "covers",
    "each",
    "part",
    "of",
    "question",
    "well",
    "but",
    "misses",
    "detail",
    "and",
    "could",
    "be",
    "shorter",
    "useful",
    "response",
    "overall",
)


class Crash(RuntimeError):
    """What a scripted backend raises after `crash_after` samples (a model or server dying mid-stage)."""


class ScriptedBackend:
    name = "scripted"

    def __init__(self, policy: "ScriptedPolicy", model_dir: str):
        self.policy, self.model_dir = policy, model_dir

    def window(self) -> int:
        return self.policy.window

    def generate(self, requests, params, *, suffix=None, choices=None, on_progress=None):
        time.sleep(self.policy.delay)
        out = []
        for r in requests:
            gens = []
            for seed in r.seeds:
                with self.policy.lock:  # served, calls come from several threads at once
                    if self.policy.crash_after is not None and self.policy.samples >= self.policy.crash_after:
                        raise Crash(f"scripted crash after {self.policy.samples} samples")
                    self.policy.samples += 1
                rng = random.Random(
                    hashlib.sha256(f"{Path(self.model_dir).name}\0{r.prompt}\0{seed}".encode()).digest()
                )
                n = rng.randint(2, max(2, params.max_new_tokens))
                text = " ".join(rng.choice(WORDS) for _ in range(n))
                probs = None
                if choices:  # a peaked distribution over the labels, as a real judge's
                    weights = [rng.random() ** 3 for _ in choices]
                    probs = {label: w / sum(weights) * 0.95 for label, w in zip(choices, weights)}
                gens.append(Generation(text, n, "length" if n == params.max_new_tokens else "eos", 0.0, probs))
            out.append(gens)
            faults.point("generate.batch")  # the embedded backend's crash point, once per request here
            if on_progress:
                on_progress(len(r.seeds))
        self.policy.calls.append(("generate", Path(self.model_dir).name, len(requests)))
        return out


class ScriptedPolicy:
    """The Policy protocol (mrtk/backends/base.py), recording every call it gets."""

    serving = None

    def __init__(self, crash_after: int | None = None, delay: float = 0.0, window: int = 0):
        self.crash_after, self.delay, self.samples, self.calls = crash_after, delay, 0, []
        self.window = window  # > 0: served like SGLang (calls in flight together from run_chunks' lanes, rows streamed)
        self.lock = threading.Lock()

    def opener(self, *args, **kwargs):
        """What `Loop(open_policy=...)` calls: (cfg, device, run_dir, tokenizer_for, info, on_serving=...)."""
        self.calls.append(("open",))
        return self

    def use(self, model_dir: str) -> ScriptedBackend:
        return ScriptedBackend(self, model_dir)

    def release(self) -> None:
        self.calls.append(("release",))

    def resume(self) -> None:
        self.calls.append(("resume",))

    def close(self) -> None:
        self.calls.append(("close",))

    def generation_dtype(self):
        return "float32", "scripted policy (tests)"


def link_model(model_dir, *, out: Path, **_) -> None:
    """M_{t+1} = M_t's files, linked: a loadable model directory (the embedded backend and the
    tokenizer read it), without training."""
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())


def zero_adapter(model_dir, path: Path) -> None:
    """A rank-1 adapter of zeros on one module (PEFT layout): M_{t+1} = M_t, as the scripted step has it;
    stacked on M_t's, as the real step stacks."""
    import torch

    from mrtk.training.adapters import LoraStack, previous_stack

    previous = previous_stack(model_dir)
    base = str(model_dir) if previous is None else previous.base
    m = "model.layers.0.self_attn.q_proj"
    rank = (previous.rank if previous else 0) + 1
    LoraStack(base, {m: (torch.zeros(rank, 4), torch.zeros(4, rank))}).save(path)


def scripted_train(model_dir, fitted, cfg, *, iteration, seed, device, run_dir, out, ui, lora_stack=False):
    """The DPO step's contract (training.worker.train_iteration): the model saved at `out` (with
    `lora_stack`, the adapter M1 -> M_{t+1} in `<out>/lora`), one metrics row per step and the stats;
    here one step per pair, no weights changed (the adapter is a zero one of the right shape)."""
    metrics = []
    for k in range(len(fitted)):
        metrics.append(
            {
                "iteration": iteration,
                "step": k + 1,
                "epoch": 1.0,
                "loss": 0.693,
                "reward_margin": 0.0,
                "learning_rate": cfg.lr,
            }
        )
        faults.point("train.step")
    link_model(model_dir, out=out)
    if lora_stack:
        zero_adapter(model_dir, out / "lora")
    return metrics, {
        "pairs_trained": len(fitted),
        "epochs": 1,
        "steps": len(fitted),
        "train_seconds": 0.0,
        "bf16": False,
        "label_smoothing": cfg.label_smoothing,
    }
