"""Generation backends, picked by name with lazy imports (no plugin system)."""

from __future__ import annotations

from mrtk.backends.base import Backend, Generation, Request, SamplingParams
from mrtk.errors import MrtkError

__all__ = ["Backend", "Generation", "Request", "SamplingParams", "make_backend"]


def make_backend(name: str, model, tokenizer, **kwargs) -> Backend:
    if name == "embedded":
        from mrtk.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(model, tokenizer, **kwargs)
    raise MrtkError(f"unknown backend {name!r}; use 'embedded'")
