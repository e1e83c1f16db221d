"""What every backend takes and returns: one sampling-params type, translated at the edge.

A backend turns requests (a user message + one seed per sample) into generations. The
structured judge and meta-judge programs are the same call with a `suffix` (fixed text
appended after the sampled part, e.g. "\\nScore: ") and `choices` (single tokens whose
probabilities are read right after the suffix, e.g. the digits 0..5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
        }


@dataclass(frozen=True)
class Request:
    prompt: str  # the user message; the backend applies the model's chat template
    seeds: tuple[int, ...]  # one sample per seed


@dataclass
class Generation:
    text: str  # exactly the sampled text the model had in context (stop strings cut off)
    n_tokens: int
    finish: str  # "eos" | "stop" | "length"
    latency_s: float
    choice_probs: dict[str, float] | None = field(default=None)  # label -> probability (raw, not renormalised)


Progress = Callable[[int], None]


class Backend(Protocol):
    name: str

    def generate(
        self,
        requests: Sequence[Request],
        params: SamplingParams,
        *,
        suffix: str | None = None,
        choices: dict[str, str] | None = None,
        on_progress: Progress | None = None,
    ) -> list[list[Generation]]: ...

    def window(
        self,
    ) -> int: ...  # samples it takes in flight at once (a server's capacity); 0: one call at a time, in-process


class Policy(Protocol):
    """The model a run serves, whatever the backend (`backends.open_policy`): the loop, `mrtk judge`
    and `mrtk eval` call only these, and never ask which backend they have."""

    serving: dict | None  # what a served backend reported at attach (versions, seeds honoured); None embedded

    def use(self, model_dir: str) -> Backend: ...  # a backend generating with this model (load, or swap weights)

    def release(self) -> None: ...  # free accelerator memory for training

    def resume(self) -> None: ...  # take it back after training

    def close(self) -> None: ...  # stop what was started (a launched server); attached servers keep running

    def generation_dtype(self) -> tuple[str | None, str]: ...  # (dtype, why) for the runs row
