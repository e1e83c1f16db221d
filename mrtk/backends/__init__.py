"""Generation backends: the embedded one is built here; the SGLang one by the loop (backends/sglang.py)."""

from __future__ import annotations

from mrtk.backends.base import Backend, Generation, Request, SamplingParams

__all__ = ["Backend", "Generation", "Request", "SamplingParams", "embedded_backend"]


def embedded_backend(model_dir: str, runtime, device: str) -> Backend:
    """The inference copy of `model_dir` behind the embedded backend, in runtime.inference_dtype
    (`auto`: what this machine runs fast, mrtk/hardware.py)."""
    from mrtk.backends.embedded import EmbeddedBackend
    from mrtk.hardware import apply_threads, inference_dtype
    from mrtk.models import load_model

    apply_threads(runtime.threads)
    model, tok = load_model(model_dir, inference_dtype(runtime.inference_dtype, device)[0], device)
    return EmbeddedBackend(model, tok, max_batch_rows=runtime.max_batch_rows, max_batch_tokens=runtime.max_batch_tokens)
