"""Pure parsers for judge scores and meta-judge verdicts.

A parse failure is data, not an exception: every parser returns a `Parsed` with either a
value or a reason, and callers store both next to the raw text (docs/METHOD.md section 2).
Nothing here ever turns a failure into a zero.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

# The LAST `Score:` line wins, so a score quoted inside the response under review (which
# appears earlier in a judgement that quotes it) cannot hijack the judge's own verdict.
_SCORE = re.compile(r"score\s*[:：]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_SPELLINGS = {"judgement": "judge?ment"}  # models write "Judgment" as often as "Judgement"
# `Winner: Judgement A`, also in the paper's Figure 2 brackets (`Winner: [Judgement A]`); never the
# format line echoed back (`Winner: [Judgement A | Judgement B]`), which names no winner.
_VERDICT = {
    label: re.compile(
        rf"winner\s*[:：]\s*\**\s*\[?\s*{_SPELLINGS.get(label, label)}\s+([AB])\b(?!\s*\|)", re.IGNORECASE
    )
    for label in ("judgement", "response", "output")
}
_ECHO = re.compile(r"winner\s*[:：][^\n]*\b[AB]\s*\|", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    value: float | str | None
    status: str  # "ok" | "failed"
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def parse_score(text: str, low: float = 0.0, high: float = 5.0) -> Parsed:
    """The score of a free-text judgement: last `Score: X` match, decimals allowed, in range."""
    matches = _SCORE.findall(text or "")
    if not matches:
        return Parsed(None, "failed", "no_score_line")
    score = float(matches[-1])
    if not low <= score <= high:
        return Parsed(None, "failed", f"out_of_range:{matches[-1]}")
    return Parsed(score, "ok")


def parse_verdict(text: str, label: str = "judgement") -> Parsed:
    """The verdict of a free-text meta-judgement (`Winner: Judgement A|B`, last match) or, with
    label "response", of a pairwise judgement (`Winner: Response A|B`)."""
    matches = _VERDICT[label].findall(text or "")
    if not matches:
        return Parsed(None, "failed", "format_line_echoed" if _ECHO.search(text or "") else "no_verdict_line")
    return Parsed(matches[-1].upper(), "ok")


def expected_score(probs: dict[str, float]) -> Parsed:
    """Expected score over digit-token probabilities (the structured judge program).

    `probs` maps each allowed digit ("0".."5") to its probability at the score position;
    they are renormalised over the allowed digits. No mass at all is a failure.
    """
    total = sum(probs.values())
    if total <= 0.0:
        return Parsed(None, "failed", "no_mass_on_score_tokens")
    return Parsed(sum(int(d) * p for d, p in probs.items()) / total, "ok")


_ARENA = re.compile(r"\[\[\s*([AB])\s*(>>|>|=|<<|<)\s*([AB])\s*\]\]")
# Arena-Hard verdicts as P(A beats B), with the strong verdicts counted three times (weight).
ARENA_SCORES = {">>": (1.0, 3), ">": (1.0, 1), "=": (0.5, 1), "<": (0.0, 1), "<<": (0.0, 3)}


def parse_arena(text: str) -> Parsed:
    """The last Arena-Hard verdict `[[A>>B]]`, `[[A>B]]`, `[[A=B]]`, `[[B>A]]` or `[[B>>A]]`, normalised
    to the A-first form (`A>>B`, `A>B`, `A=B`, `A<B`, `A<<B`)."""
    matches = [(a, op, b) for a, op, b in _ARENA.findall(text or "") if a != b]
    if not matches:
        return Parsed(None, "failed", "no_arena_verdict")
    a, op, _ = matches[-1]
    if a == "B":
        op = {">>": "<<", ">": "<", "=": "=", "<": ">", "<<": ">>"}[op]
    return Parsed(f"A{op}B", "ok")


def p_first(probs: dict[str, float]) -> float | None:
    total = probs.get("A", 0.0) + probs.get("B", 0.0)
    return probs.get("A", 0.0) / total if total > 0 else None


def sample_verdict(probs: dict[str, float], temperature: float, seed: int) -> Parsed:
    """A or B from the two tokens' probabilities (tempered); argmax at temperature 0."""
    p_a = p_first(probs)
    if p_a is None:
        return Parsed(None, "failed", "no_mass_on_verdict_tokens")
    if temperature == 0.0 or p_a in (0.0, 1.0):
        return Parsed("A" if p_a >= 0.5 else "B", "ok")
    la, lb = math.log(p_a) / temperature, math.log(1.0 - p_a) / temperature
    p_a = 1.0 / (1.0 + math.exp(lb - la))
    return Parsed("A" if random.Random(seed).random() < p_a else "B", "ok")
