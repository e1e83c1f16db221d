"""Arena-Hard-Auto's judge settings, read from the benchmark's own judge config file.

Arena-Hard-Auto (github.com/lmarena/arena-hard-auto) keeps its judge in YAML: the v0.1
`config/judge_config.yaml` has `system_prompt`, `prompt_template` (a one-element list with
`{question_1}`, `{answer_1}`, `{answer_2}`), `temperature: 0`, `max_tokens: 4096` and
`regex_pattern: \\[\\[([AB<>=]+)\\]\\]`; the newer `config/arena-hard-v0.1.yaml` has a string
`prompt_template` with `{QUESTION}`, `{ANSWER_A}`, `{ANSWER_B}`. `mrtk eval arena-hard
--judge-config FILE` sends exactly that system prompt and template with those settings, and
reads the verdict as the benchmark does: the distinct matches of `regex_pattern`; exactly one
is the verdict, none or several disagreeing is no verdict. When a reply has no verdict label at
all, the judge is asked once more in the same conversation ("continue your judgment and finish by
outputting a final verdict label") and the verdict is read from both replies joined, as
`gen_judgment.py` does (two attempts). The newer configs keep the system prompt out of the YAML
(in `utils/judge_utils.py`'s JUDGE_SETTINGS); a file without `system_prompt` is refused in one
line rather than sending the user template alone. Without a file, mrtk's own
paraphrase (`prompts/eval_arena_hard.md`) is used with the benchmark's numbers, and every
printout names it as the fallback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from mrtk.errors import MrtkError

DEFAULT_MAX_TOKENS = 4096  # arena-hard-auto config/judge_config.yaml (v0.1): the judge's and the answers' limit
DEFAULT_REGEX = r"\[\[([AB<>=]+)\]\]"
# arena-hard-auto gen_judgment.py: the second attempt's user turn, and two attempts in all
CONTINUE = "continue your judgment and finish by outputting a final verdict label"
ATTEMPTS = 2
_PLACEHOLDERS = {
    "{question_1}": "{{question}}",
    "{answer_1}": "{{output_a}}",
    "{answer_2}": "{{output_b}}",
    "{QUESTION}": "{{question}}",
    "{ANSWER_A}": "{{output_a}}",
    "{ANSWER_B}": "{{output_b}}",
}
# Arena-Hard verdict strings -> the A-first form mrtk's ARENA_SCORES uses.
_NORMAL = {
    "A>>B": "A>>B",
    "A>B": "A>B",
    "A=B": "A=B",
    "B=A": "A=B",
    "B>A": "A<B",
    "B>>A": "A<<B",
    "A<B": "A<B",
    "A<<B": "A<<B",
}


@dataclass(frozen=True)
class ArenaJudge:
    system_prompt: str | None
    body: str  # mrtk template body: {{question}}, {{output_a}}, {{output_b}}
    temperature: float
    max_tokens: int
    regex: str
    source: str  # the file, or the fallback's name

    def render(self, question: str, output_a: str, output_b: str) -> list[dict]:
        values = {"question": question, "output_a": output_a, "output_b": output_b}
        user = re.sub(r"{{(question|output_a|output_b)}}", lambda m: values[m.group(1)], self.body)
        return ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": user}
        ]

    def ask(self, judge, messages: list[dict]):
        """One game as gen_judgment.py plays it: a reply without any verdict label gets the CONTINUE
        turn (the conversation so far, then that request), up to ATTEMPTS replies; the returned
        reply's text is the replies joined by newlines, the text the verdict is read from."""
        reply, texts = None, []
        for _ in range(ATTEMPTS):
            reply = judge.ask(messages)
            if not reply.ok:
                return reply if not texts else replace(reply, text="\n".join(texts))
            texts.append(reply.text or "")
            if self.verdict("\n".join(texts))[1] != "no_arena_verdict":
                break
            messages = messages + [
                {"role": "assistant", "content": reply.text or ""},
                {"role": "user", "content": CONTINUE},
            ]
        return replace(reply, text="\n".join(texts))

    def verdict(self, text: str | None) -> tuple[str | None, str]:
        """(A-first verdict or None, reason) as arena-hard-auto's get_score: one distinct match."""
        found = {m.strip("\n") for m in re.findall(self.regex, text or "") if m != ""}
        if not found:
            return None, "no_arena_verdict"
        if len(found) > 1:
            return None, "several_different_verdicts"
        raw = found.pop()
        return (_NORMAL[raw], "ok") if raw in _NORMAL else (None, f"unknown_verdict:{raw}")


def load_judge_config(path: str | Path) -> ArenaJudge:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MrtkError(
            f"--judge-config {path}: no such file; give Arena-Hard-Auto's config/judge_config.yaml"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MrtkError(
            f"--judge-config {path}: not a YAML file ({type(e).__name__}); give Arena-Hard-Auto's judge config"
        ) from None
    if not isinstance(raw, dict) or "prompt_template" not in raw:
        raise MrtkError(f"--judge-config {path}: no prompt_template; give Arena-Hard-Auto's config/judge_config.yaml")
    template = raw["prompt_template"]
    template = template[0] if isinstance(template, list) and len(template) == 1 else template
    if not isinstance(template, str):
        raise MrtkError(
            f"--judge-config {path}: prompt_template must be a string (or a one-element list: single-turn judging)"
        )
    body = template
    for theirs, ours in _PLACEHOLDERS.items():
        body = body.replace(theirs, ours)
    if not all(v in body for v in ("{{question}}", "{{output_a}}", "{{output_b}}")):
        raise MrtkError(
            f"--judge-config {path}: prompt_template lacks {{question_1}}/{{answer_1}}/{{answer_2}} "
            "(or {QUESTION}/{ANSWER_A}/{ANSWER_B})"
        )
    system = raw.get("system_prompt")
    if not (isinstance(system, str) and system.strip()):
        raise MrtkError(
            f"--judge-config {path}: no system_prompt (Arena-Hard-Auto's newer configs keep it in utils/judge_utils.py); "
            "add `system_prompt: ...` to the file, or give v0.1's config/judge_config.yaml"
        )
    try:
        re.compile(raw.get("regex_pattern") or DEFAULT_REGEX)
    except re.error as e:
        raise MrtkError(f"--judge-config {path}: regex_pattern is not a regular expression ({e})") from None
    return ArenaJudge(
        system_prompt=system,
        body=body,
        temperature=float(raw.get("temperature", 0.0)),
        max_tokens=int(raw.get("max_tokens", DEFAULT_MAX_TOKENS)),
        regex=raw.get("regex_pattern") or DEFAULT_REGEX,
        source=str(path),
    )


def fallback_judge(template) -> ArenaJudge:
    """mrtk's paraphrase (an eval template), with the benchmark's temperature, limit and verdict rule."""
    return ArenaJudge(
        system_prompt=None,
        body=template.body,
        temperature=0.0,
        max_tokens=DEFAULT_MAX_TOKENS,
        regex=DEFAULT_REGEX,
        source=f"{template.name} (mrtk's paraphrase, not Arena-Hard's prompt; pass --judge-config for the benchmark's)",
    )
