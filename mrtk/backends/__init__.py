"""Generation backends, and the policy a run serves: `open_policy(cfg, run_dir)` gives the loop,
`mrtk judge` and `mrtk eval` the same thing whatever the backend: `use(model_dir)` returns a
backend generating with that model (the embedded one loads it; SGLang swaps its weights),
`release()` / `resume()` free and take back accelerator memory around training, `close()`
stops what was started (a launched SGLang server; attached servers are left running),
`generation_dtype()` says what generation runs in and why. This module is the one place that
asks which backend a config names."""

from __future__ import annotations

from pathlib import Path

from mrtk.backends.base import Backend, Generation, Policy, Request, SamplingParams
from mrtk.rows import parse_version

__all__ = ["Backend", "Generation", "Policy", "Request", "SamplingParams", "embedded_backend", "open_policy"]


def embedded_backend(model_dir: str, runtime, device: str) -> Backend:
    """The inference copy of `model_dir` behind the embedded backend, in runtime.inference_dtype
    (`auto`: what this machine runs fast, mrtk/hardware.py)."""
    from mrtk.backends.embedded import EmbeddedBackend
    from mrtk.hardware import apply_threads, inference_dtype
    from mrtk.models import load_model

    apply_threads(runtime.threads)
    model, tok = load_model(model_dir, inference_dtype(runtime.inference_dtype, device)[0], device)
    return EmbeddedBackend(model, tok, max_batch_rows=runtime.max_batch_rows, max_batch_tokens=runtime.max_batch_tokens)


def model_version(model_dir: str) -> str:
    """M<t> (or F<t>, a temporary next model) for a run's model directory (models/M<t>), else M1 (the
    base model): the weight version a server is told to hold, and checked on every answer."""
    name = Path(model_dir).name
    return name if parse_version(name) else "M1"


class EmbeddedPolicy:
    """One model in memory at a time; training runs in this process, so release drops it."""

    serving = None  # nothing served: no server versions to record

    def __init__(self, cfg, device: str):
        self.cfg, self.device = cfg, device
        self.backend = self.model_dir = None

    def use(self, model_dir: str) -> Backend:
        if self.backend is None or self.model_dir != model_dir:
            self.release()
            self.backend, self.model_dir = embedded_backend(model_dir, self.cfg.runtime, self.device), model_dir
        return self.backend

    def release(self) -> None:
        from mrtk.hardware import release_memory

        self.backend = self.model_dir = None
        release_memory()

    def resume(self) -> None:
        pass

    def close(self) -> None:
        self.backend = self.model_dir = None

    def generation_dtype(self) -> tuple[str, str]:
        """(dtype, why): `runtime.inference_dtype`, with `auto` decided for this machine."""
        from mrtk.hardware import inference_dtype

        return inference_dtype(self.cfg.runtime.inference_dtype, self.device)


def open_policy(
    cfg, device: str, run_dir: Path, tokenizer_for, info=lambda text: None, on_serving=lambda serving: None
) -> Policy:
    """The policy backend of a run config: `EmbeddedPolicy` or `SGLangPolicy` (launched or attached).
    `on_serving` gets what a served backend reports at attach (versions, whether seeds are honoured)."""
    if cfg.backend == "sglang":
        from mrtk.backends.sglang import SGLangPolicy

        lora = None
        if cfg.sglang.weight_sync == "lora":  # the stacked adapter of M_{T+1} is the largest: rank r x iterations
            lora = (cfg.train.lora.r * cfg.iterations, list(cfg.train.lora.targets))
        return SGLangPolicy(cfg.sglang, run_dir, tokenizer_for, info, on_serving, lora)
    return EmbeddedPolicy(cfg, device)


def serving_plan(cfg, model: str) -> list[str]:
    """What `mrtk run --dry-run` says about serving: the SGLang launch line, or the servers attached."""
    if cfg.backend != "sglang":
        return []
    from mrtk.backends.sglang import launch_command

    if cfg.sglang.launch:
        return ["sglang server: " + " ".join(launch_command(model, cfg.sglang, "M1"))]
    return [
        f"sglang: attach to {', '.join(cfg.sglang.urls)}"
        + (f"; control calls to {', '.join(cfg.sglang.worker_urls)}" if cfg.sglang.worker_urls else "")
    ]
