"""Generation backends: the embedded one is built here; the SGLang one by the loop (backends/sglang.py)."""

from __future__ import annotations

from mrtk.backends.base import Backend, Generation, Request, SamplingParams

__all__ = ["Backend", "Generation", "Request", "SamplingParams", "embedded_backend"]


def embedded_backend(model_dir: str, runtime, device: str) -> Backend:
    """The inference copy of `model_dir` (runtime.inference_dtype) behind the embedded backend."""
    from mrtk.backends.embedded import EmbeddedBackend
    from mrtk.models import load_model

    model, tok = load_model(model_dir, runtime.inference_dtype, device)
    return EmbeddedBackend(model, tok, max_batch_rows=runtime.max_batch_rows, max_batch_tokens=runtime.max_batch_tokens)
