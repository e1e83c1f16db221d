"""Row keys and seeds shared by stages, store and loop.

Rows are plain dicts whose keys are the column names of the DuckDB tables (see
`store/migrations.py`). Every row id and every sampling seed derives from the row's inputs
(run seed, iteration, prompt, sample index, ...), so rerunning a stage after a crash
regenerates exactly the rows that are missing, with the same seeds, and inserts only those.
"""

from __future__ import annotations

import hashlib
import re

_VERSION = re.compile(r"([MF])(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[str, int] | None:
    """("M", t) for a run's model version M<t>; ("F", t) for F<t>, the temporary next model of iteration
    t-1 (pairs.chosen_from: future); ("S", t) for M<t>.<j>, the policy of iteration t after its j-th sync
    (train.sync_every_steps); None for anything else (a path, a hub id). The one reader of them."""
    m = _VERSION.fullmatch(text)
    if not m or (m.group(3) is not None and m.group(1) != "M"):
        return None
    return ("S" if m.group(3) is not None else m.group(1)), int(m.group(2))


def sync_version(it: int, j: int) -> str:
    """The policy that generates segment j of iteration t: M<t> before any sync, M<t>.<j> after j."""
    return f"M{it}" if j == 0 else f"M{it}.{j}"


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (no dependence on Python's hash randomisation)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFFFFFFFFFF


RESPONSE_KINDS = {"actor": "r", "anchor": "a", "future": "f", "heldout": "h"}


def response_id(iteration: int, prompt_id: str, k: int, kind: str = "actor") -> str:
    """A response of M_t (`r`), an anchor: M1's sample of iteration t's prompt (`a`, pairs.rejected_from:
    initial), a sample of iteration t's temporary next model (`f`, pairs.chosen_from: future), or M_t's
    answer to a held-out verifiable prompt (`h`, prompts.heldout)."""
    return f"it{iteration}/{prompt_id}/{RESPONSE_KINDS[kind]}{k}"


def response_kind(response_id_: str) -> str:
    """The kind a response id names (the inverse of `response_id`'s last part)."""
    letter = response_id_.rsplit("/", 1)[-1][:1]
    return next(kind for kind, tag in RESPONSE_KINDS.items() if tag == letter)


# The pairs kinds the iteration's DPO trains on. The table also holds `anchored` pairs (pairs.chosen_from:
# future): they trained the temporary next model and stay for the record, never in the final DPO.
TRAINED_PAIR_KINDS = ("actor", "judge")


def pair_id(iteration: int, kind: str, prompt_id: str) -> str:
    """A `pairs` row: one per prompt and kind (actor, judge, anchored) in an iteration."""
    return f"it{iteration}/{kind}/{prompt_id}"


def audit_id(model: str, response_id_: str) -> str:
    """An external judge's score of one response in `mrtk eval audit` (an `eval_items` row)."""
    return f"audit/{model}/{response_id_}"


def judgement_id(response_id_: str, template_hash: str, j: int) -> str:
    return f"{response_id_}/{template_hash}/j{j}"


def pairwise_id(response_a: str, response_b: str, key: str, j: int) -> str:
    return f"{response_a}|{response_b}|{key}/j{j}"


def meta_id(judgement_a: str, judgement_b: str, template_hash: str) -> str:
    return f"{judgement_a}|{judgement_b}|{template_hash}"


def eval_item_id(eval_name: str, iteration: int, judge: str, unit: str) -> str:
    """An `eval_items` row: one judged unit (a game, or a judgement) of an eval for a model iteration and judge."""
    return f"{eval_name}/{iteration}/{judge}/{unit}"


def eval_output_id(eval_name: str, iteration: int, example_id: str) -> str:
    return f"{eval_name}/{iteration}/{example_id}"


def answer_id(example_id: str, side: str) -> str:
    """A human-labelled pair's answer ("a", "b") or a ranked list's reply (its index), judged as a response."""
    return f"{example_id}#{side}"


def format_score(score: float) -> str:
    """How a structured judgement's score is written into its text (`Score: 3` or `Score: 2.37`)."""
    return str(int(score)) if float(score).is_integer() else f"{score:.2f}"


def made_by(template, model_version: str, params, seed: int, g) -> dict:
    """The columns every generated row carries: the template and model that made it, how it was
    sampled (`params`, a SamplingParams; `seed`), and what the generation `g` cost."""
    return {
        "template": template.name,
        "template_hash": template.hash,
        "model_version": model_version,
        "sampling": params.as_dict(),
        "seed": seed,
        "n_tokens": g.n_tokens,
        "latency_s": g.latency_s,
    }
