"""The judge programs the judge, pairwise-judge and meta-judge stages send, in one place.

Free text (the paper's): sample the whole judgement and parse it afterwards. Structured (the
embedded default): sample a short justification until a stop string, append fixed text (the
`suffix`, e.g. "\\nScore: ") and read the probabilities of the `choices` tokens right after it
(SGLang's `select`, done as one generate call by every backend). A stage builds its requests,
calls `run_program` with its program or None, and reads `raw_text` back: no stage branches on
the backend or repeats the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mrtk.backends.base import Backend, Generation, Progress, Request, SamplingParams
from mrtk.prompts import Template

WINNER_STOPS = ("Winner", "winner", "WINNER")
AB_CHOICES = {"A": " A", "B": " B"}
SCORE_SUFFIX = "\nScore: "


@dataclass(frozen=True)
class Program:
    suffix: str  # appended after the sampled justification
    choices: dict[str, str]  # label -> the token whose probability is read after the suffix
    stops: tuple[str, ...]  # where the sampled justification ends


def score_choices(template: Template) -> dict[str, str]:
    low, high = (int(x) for x in template.score_range)
    return {str(d): str(d) for d in range(low, high + 1)}


def score_program(template: Template) -> Program:
    """Pointwise judge: "\\nScore: " and the digits of the template's score range."""
    return Program(SCORE_SUFFIX, score_choices(template), ("Score:", "score:", "SCORE:"))


PAIRWISE = Program("\nWinner: Response", AB_CHOICES, WINNER_STOPS)  # pairwise judge: which response
META = Program("\nWinner: Judgement", AB_CHOICES, WINNER_STOPS)  # meta-judge: which judgement


def run_program(
    backend: Backend,
    requests: Sequence[Request],
    sampling,
    program: Program | None,
    on_progress: Progress | None = None,
) -> tuple[SamplingParams, list[list[Generation]]]:
    """(the sampling params sent, the generations): `program` None samples free text. `sampling`
    is a stage's config section (temperature, top_p, max_new_tokens)."""
    params = SamplingParams(
        sampling.temperature, sampling.top_p, sampling.max_new_tokens, program.stops if program else ()
    )
    outputs = backend.generate(
        requests,
        params,
        suffix=program.suffix if program else None,
        choices=program.choices if program else None,
        on_progress=on_progress,
    )
    return params, outputs


def raw_text(g: Generation, program: Program | None) -> str:
    """Exactly what the model had in context: the sampled text, then the program's suffix."""
    return g.text + program.suffix if program else g.text
