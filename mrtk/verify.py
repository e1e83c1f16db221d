"""Ground truth without a judge: a prompt's machine-checkable instructions (IFEval's schema,
Zhou et al. 2023: `instruction_id_list` + `kwargs`), checked by IFEval's own checkers as the
`if-verifiable` package (0.1.2, Apache-2.0) ships them: `if_verifiable.ifeval.instructions`
is Google's `instruction_following_eval` code, and `if_verifiable.common.evaluate_instructions`
does IFEval's strict check (the response as written) and loose one (any of eight variants: first
or last line dropped, markdown asterisks removed). Nothing here re-implements a checker.

This module owns: refusing a prompt whose instructions cannot be checked (an unknown id, bad
kwargs, a checker that needs data this machine lacks) before a run starts, and checking one
response. It does not aggregate: the read side (`evals/truth.py`) turns checks into numbers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from mrtk.errors import MrtkError

PACKAGE = "if-verifiable"


@dataclass(frozen=True)
class Checks:
    """A prompt's instructions: IFEval's `instruction_id_list` and `kwargs`, one dict per id."""

    ids: tuple[str, ...]
    kwargs: tuple[dict, ...]

    def as_json(self) -> dict:
        return {"instruction_id_list": list(self.ids), "kwargs": [dict(k) for k in self.kwargs]}

    @staticmethod
    def from_json(obj: dict | None) -> "Checks | None":
        if not obj:
            return None
        return Checks(tuple(obj["instruction_id_list"]), tuple(dict(k) for k in obj["kwargs"]))


@dataclass(frozen=True)
class Verdict:
    """IFEval's four numbers for one response: every instruction followed (strict, loose) and the
    share followed (strict, loose), with each instruction's (id, strict, loose)."""

    strict: bool
    loose: bool
    partial_strict: float
    partial_loose: float
    per_instruction: tuple[tuple[str, bool, bool], ...]


@functools.lru_cache(maxsize=1)
def _registry() -> dict:
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError:
        raise MrtkError(
            f"prompts with instruction_id_list need IFEval's checkers; run: pip install '{PACKAGE}==0.1.2'"
        ) from None
    return INSTRUCTION_DICT


def parse_checks(obj: dict, where: str) -> Checks | None:
    """The instructions of one pool line (None when it has none), or a one-line MrtkError naming the
    line and the fix. Every id must be IFEval's, every kwargs dict must build its checker, and the
    checker must run on this machine (one needs NLTK's punkt data, which is a download)."""
    if "instruction_id_list" not in obj and "kwargs" not in obj:
        return None
    ids, kwargs = obj.get("instruction_id_list"), obj.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise MrtkError(f"{where}: instruction_id_list must be a non-empty list of IFEval instruction ids")
    if kwargs is None:
        kwargs = [{} for _ in ids]
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise MrtkError(f"{where}: kwargs must be a list of {len(ids)} objects, one per instruction id")
    registry = _registry()
    for iid, kw in zip(ids, kwargs):
        if iid not in registry:
            raise MrtkError(
                f"{where}: unknown instruction id {iid!r}; use one of IFEval's ({', '.join(sorted(registry))})"
            )
        _runnable(iid, where, kw)
    return Checks(tuple(ids), tuple({k: v for k, v in kw.items() if v is not None} for kw in kwargs))


def _runnable(iid: str, where: str, kw: dict) -> None:
    checker = _registry()[iid](iid)
    try:
        checker.build_description(**{k: v for k, v in kw.items() if v is not None})
        if "prompt" in (checker.get_instruction_args() or {}):
            checker.build_description(prompt="x")
        checker.check_following("A short answer. It has two sentences.")
    except LookupError:  # NLTK data (length_constraints:number_sentences reads the punkt tokenizer)
        raise MrtkError(
            f"{where}: {iid} needs NLTK's punkt_tab data, not on this machine; run: python -m nltk.downloader punkt_tab"
        ) from None
    except (TypeError, ValueError, KeyError) as e:
        raise MrtkError(
            f"{where}: {iid} cannot be built from kwargs {kw} ({type(e).__name__}: {e}); fix the kwargs"
        ) from None


def verify(text: str, prompt: str, checks: Checks) -> Verdict:
    """IFEval's strict and loose checks of `text` (the response) against `checks`. An empty
    response follows nothing (IFEval's rule)."""
    from if_verifiable.common import evaluate_instructions

    results, scores = evaluate_instructions(
        text, list(checks.ids), [dict(k) for k in checks.kwargs], prompt, _registry()
    )
    per = tuple((r.instruction_id, bool(r.strict_pass), bool(r.loose_pass)) for r in results)
    if not per:  # empty text: IFEval gives 0 for every number
        per = tuple((i, False, False) for i in checks.ids)
    return Verdict(
        strict=bool(scores.binary_strict),
        loose=bool(scores.binary_loose),
        partial_strict=float(scores.partial_strict),
        partial_loose=float(scores.partial_loose),
        per_instruction=per,
    )
