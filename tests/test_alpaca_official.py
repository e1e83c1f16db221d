"""AlpacaEval 2 as the leaderboard computes it: the annotator's own prompt and logprob-weighted
preference, win rate and standard error, and the length-controlled GLM, each checked against
the `alpaca_eval` package's own functions on the same inputs (real GPT-4 Turbo annotations
from the shared data where they are needed)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import mrtk, rows

import alpaca_eval  # noqa: F401

MODELS = [
    "FuseChat-Llama-3.1-8B-Instruct",
    "OpenHermes-2.5-Mistral-7B",
    "alpaca-7b",
    "claude-2.1",
    "gemma-7b-it",
    "gpt-3.5-turbo-1106",
]


def annotations(shared_data, model: str) -> list[dict]:
    return [json.loads(line) for line in shared_data(f"alpaca_eval/gpt4_turbo_annotations/{model}.jsonl").open()]


@pytest.mark.parametrize("model", MODELS)
def test_win_rate_and_standard_error_equal_alpaca_eval(model, shared_data):
    import pandas as pd
    from alpaca_eval.metrics.winrate import get_winrate

    from mrtk.evals import metrics

    rows_ = annotations(shared_data, model)
    prefs = [float(r["preference"]) - 1.0 for r in rows_]
    ours = metrics.win_rate(prefs)
    theirs = get_winrate(pd.DataFrame({"preference": [float(r["preference"]) for r in rows_]}))
    assert ours["win_rate"] == pytest.approx(theirs["win_rate"], abs=1e-9)
    assert ours["standard_error"] == pytest.approx(theirs["standard_error"], abs=1e-9)


def test_weighted_preference_is_alpaca_evals_logprob_parser():
    from alpaca_eval.completion_parsers import logprob_parser

    from mrtk.evals.alpaca_official import load_annotator

    ann = load_annotator()
    assert ann.model == "gpt-4-1106-preview" and ann.completion_kwargs == {
        "max_tokens": 1,
        "temperature": 1,
        "logprobs": True,
        "top_logprobs": 5,
    }
    top = [{"token": "M", "logprob": -0.1}, {"token": "m", "logprob": -2.4}, {"token": "Both", "logprob": -9.0}]
    p_first, reason = ann.preference_first("M", top)
    theirs = logprob_parser(
        {"logprobs": {"content": [{"top_logprobs": top}]}},
        numerator_token="m",
        denominator_tokens=["m", "M"],
        is_binarize=False,
    )
    assert reason == "ok" and 2 - p_first == pytest.approx(theirs[0], abs=1e-12)
    assert p_first == pytest.approx(math.exp(-2.4) / (math.exp(-2.4) + math.exp(-0.1)))


def test_length_controlled_win_rate_is_alpaca_evals_glm(tmp_path, monkeypatch, shared_data):
    """One difficulty file given to both: AlpacaEval's GLM on its own annotation file, and mrtk's LC
    on the rows mrtk builds from its preferences and outputs, are the same number."""
    import numpy as np
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    from mrtk.evals.alpaca_official import official_lc

    rows_ = annotations(shared_data, "claude-2.1")
    ref_path = shared_data("alpaca_eval/gpt4_1106_preview_model_outputs.json")
    reference = json.loads(ref_path.read_text())
    rng = np.random.default_rng(0)
    n = len(reference)
    difficulty = rng.normal(0, 1, n)
    gamed = pd.DataFrame(
        [
            {
                "model": m,
                "index": i,
                "instruction_difficulty": difficulty[i],
                "preference": float(rng.uniform()),
                "std_delta_len": float(rng.normal(s, 1)),
                "not_gamed_baseline": False,
            }
            for m, s in (("gamed_verbose", 1.0), ("gamed_concise", -1.0))
            for i in range(n)
        ]
    )
    path = tmp_path / "df_gamed.csv"
    gamed.to_csv(path, index=False)
    theirs_df = pd.DataFrame(
        [
            {
                "preference": float(r["preference"]),
                "output_1": reference[int(r["baseline_index"])]["output"],
                "output_2": r["output_2"],
                "index": int(r["baseline_index"]),
                "generator_1": r["generator_1"],
                "generator_2": r["generator_2"],
                "annotator": r["annotator"],
            }
            for r in rows_
        ]
    )
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda *a, **k: str(path))
    theirs = glm_winrate.get_length_controlled_winrate(theirs_df, save_weights_dir=None, is_warn_extreme_changes=False)
    monkeypatch.undo()
    # mrtk's side: P(policy wins) per instruction, as eval_items holds it, turned back into AlpacaEval rows by official_lc's caller
    prefs = {r["baseline_index"]: float(r["preference"]) - 1.0 for r in rows_}
    ours, how = official_lc(
        [
            {
                "preference": 1.0 + prefs[r["baseline_index"]],
                "output_1": reference[int(r["baseline_index"])]["output"],
                "output_2": r["output_2"],
                "index": int(r["baseline_index"]),
                "generator_1": "gpt4_1106_preview",
                "generator_2": "mrtk-M2",
                "annotator": "weighted_alpaca_eval_gpt4_turbo",
            }
            for r in rows_
        ],
        path,
    )
    assert how == "alpaca_eval length_controlled_v1"
    assert ours == pytest.approx(theirs["length_controlled_winrate"], abs=1e-9)


def test_request_carries_the_official_prompt_and_asks_for_logprobs(run_copy, monkeypatch):
    from mrtk.evals.alpaca_official import load_annotator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = run_copy.parent / "alpaca.json"
    data.write_text(
        json.dumps(
            [{"instruction": q, "output": a} for q, a in [("Name a primary colour.", "Red."), ("What is 3+4?", "7.")]]
        )
    )
    alpaca = ["eval", "alpaca", "--run", str(run_copy), "--data", str(data), "--max-new-tokens", "8"]
    res = mrtk(*alpaca, "--dry-run-reply", "M", "-q", cwd=run_copy.parent, check=True)
    assert "lc_approx_no_difficulty" in res.stdout and "weighted_alpaca_eval_gpt4_turbo" in res.stdout.replace("\n", "")
    db = run_copy / "mrtk.duckdb"
    calls = rows(db, "SELECT messages, params FROM eval_calls ORDER BY call_key")
    ann = load_annotator()
    outputs = dict(rows(db, "SELECT example_id, output FROM eval_outputs WHERE eval = 'alpaca'"))
    items = dict(rows(db, "SELECT example_id, slot FROM eval_items WHERE eval = 'alpaca'"))
    expected = []
    for ex, (q, ref) in enumerate([("Name a primary colour.", "Red."), ("What is 3+4?", "7.")]):
        mine = outputs[str(ex)]
        a, b = (mine, ref) if items[str(ex)] == "policy_first" else (ref, mine)
        expected.append(ann.render(q, a, b))
    assert sorted(json.dumps(json.loads(m)) for m, _ in calls) == sorted(json.dumps(e) for e in expected)
    assert [m["role"] for m in expected[0]] == ["system", "user"] and "## Best Model Identifier" in expected[0][1][
        "content"
    ]
    for _, params in calls:
        assert {k: json.loads(params)[k] for k in ("logprobs", "top_logprobs", "max_tokens", "temperature")} == {
            "logprobs": True,
            "top_logprobs": 5,
            "max_tokens": 1,
            "temperature": 1,
        }
    # "M" (the second output) without logprobs: a hard verdict, and the item says so
    got = rows(db, "SELECT slot, preference, parse_reason FROM eval_items WHERE eval = 'alpaca' ORDER BY example_id")
    assert all(r[2] == "no_logprobs_text_verdict" and r[1] == (0.0 if r[0] == "policy_first" else 1.0) for r in got)
    # a smaller --limit afterwards: this eval's example only (before: a KeyError on the example judged earlier)
    res = mrtk(*alpaca, "--dry-run-reply", "M", "-q", "--limit", "1", cwd=run_copy.parent, check=True)
    assert rows(db, "SELECT n FROM eval_results WHERE eval = 'alpaca' AND metric = 'win_rate'") == [(1,)]
