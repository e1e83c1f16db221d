"""One shape for every external eval judge prompt: a `Grader`.

A grader turns (question, first answer, second answer) into the chat messages the external judge
is sent, reads the reply into (parsed verdict, P(the first answer is better), weight), and carries
the judge's sampling (temperature, max tokens, extra completion arguments) and its name and
source for the printout. Three constructors, one per kind of prompt mrtk knows:
- `from_template`: an mrtk eval template (`prompts/eval_*.md`, hard A/B or Arena-style verdicts);
- `from_arena`: Arena-Hard-Auto's judge config (arena_config.py: its system prompt, template and
  verdict pattern, and its second attempt when a reply has no verdict label);
- `from_annotator`: AlpacaEval's leaderboard annotator (alpaca_official.py: a weighted preference
  from the first token's logprobs, and the leaderboard's length-controlled GLM).
`evals/pairwise.py` and the CLI never ask which kind they hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from mrtk.evals.alpaca_official import Annotator
from mrtk.evals.arena_config import ArenaJudge
from mrtk.parse import ARENA_SCORES, Parsed, parse_arena, parse_verdict

Read = Callable[[str | None, list | None], tuple[Parsed, float | None, int]]


@dataclass(frozen=True)
class Grader:
    name: str
    source: str  # the file the prompt came from, or what it is (named in every printout)
    messages: Callable[[str, str, str], list[dict]]  # (question, first answer, second answer) -> chat messages
    read: Read  # (reply text, first-token top logprobs) -> (parsed, P(first answer better) or None, weight)
    temperature: float
    max_tokens: int
    extra: dict = field(default_factory=dict)  # more completion arguments (logprobs, top_logprobs)
    ask: Callable | None = None  # (judge, messages) -> Reply, when one game is more than one call (Arena-Hard)
    leaderboard_lc: bool = False  # AlpacaEval's own annotator: LC from alpaca_eval's GLM with instruction difficulty

    def judge(self, judge, messages: list[dict]):
        """The reply to one game."""
        return self.ask(judge, messages) if self.ask else judge.ask(messages)


def from_template(template) -> Grader:
    """An mrtk eval template: `parser: arena` reads `[[A>B]]`-style verdicts (weights as Arena-Hard),
    else `Winner: Output A|B`; its sampling merged over greedy, 512 tokens (config.EvalJudgeSampling)."""
    from mrtk.config import EvalJudgeSampling, with_template_sampling

    sampling = with_template_sampling(EvalJudgeSampling(), template)
    arena = template.parser == "arena"

    def read(text, _logprobs):
        parsed = parse_arena(text) if arena else parse_verdict(text, "output")
        if not parsed.ok:
            return parsed, None, 1
        return (
            (parsed, *ARENA_SCORES[parsed.value[1:-1]]) if arena else (parsed, 1.0 if parsed.value == "A" else 0.0, 1)
        )

    return Grader(
        name=template.name,
        source=template.name,
        messages=lambda q, a, b: [{"role": "user", "content": template.render(question=q, output_a=a, output_b=b)}],
        read=read,
        temperature=sampling.temperature,
        max_tokens=sampling.max_new_tokens,
    )


def from_arena(judge: ArenaJudge) -> Grader:
    """Arena-Hard-Auto's judge config (or mrtk's named fallback in its form)."""

    def read(text, _logprobs):
        value, reason = judge.verdict(text)
        if value is None:
            return Parsed(None, "failed", reason), None, 1
        return (Parsed(value, "ok"), *ARENA_SCORES[value[1:-1]])

    return Grader(
        name="arena-hard",
        source=judge.source,
        messages=judge.render,
        read=read,
        temperature=judge.temperature,
        max_tokens=judge.max_tokens,
        ask=judge.ask,
    )


def from_annotator(ann: Annotator) -> Grader:
    """AlpacaEval's annotator: output_1 ("m") is shown first; the preference is p(m) / (p(m) + p(M))."""
    kwargs = dict(ann.completion_kwargs)
    temperature, max_tokens = float(kwargs.pop("temperature", 1.0)), int(kwargs.pop("max_tokens", 1))

    def read(text, logprobs):
        p_first, reason = ann.preference_first(text, logprobs)
        return Parsed((text or "").strip()[:8] or None, "ok" if p_first is not None else "failed", reason), p_first, 1

    return Grader(
        name=ann.name,
        source=ann.source,
        messages=ann.render,
        read=read,
        temperature=temperature,
        max_tokens=max_tokens,
        extra=kwargs,
        leaderboard_lc=True,
    )
