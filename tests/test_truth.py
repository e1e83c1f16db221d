"""Ground truth in the loop: IFEval's checkers on prompts (mrtk.verify), the truth numbers on hand
cases (evals/truth.py), and the loop with a verifiable pool, a held-out slice and the verifier
control arm (scripted policy, in-process)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY, mrtk, rows
from scripted import ScriptedPolicy, scripted_train

from mrtk.config import validate_config
from mrtk.errors import MrtkError
from mrtk.evals import truth
from mrtk.inputs import check_inputs
from mrtk.loop import Loop
from mrtk.runs import new_run, open_run
from mrtk.verify import Checks, parse_checks, verify

LOWER = Checks(("change_case:english_lowercase",), ({},))
NO_COMMA_SHORT = Checks(
    ("punctuation:no_comma", "length_constraints:number_words"), ({}, {"relation": "less than", "num_words": 5})
)


def test_ifevals_checkers_strict_and_loose():
    assert verify("all lowercase here.", "p", LOWER).strict
    v = verify("Not lowercase.", "p", LOWER)
    assert not v.strict and not v.loose and v.partial_strict == 0.0
    v = verify("one, two", "p", NO_COMMA_SHORT)  # a comma: one of two followed
    assert (
        not v.strict
        and v.partial_strict == 0.5
        and v.per_instruction
        == (
            ("punctuation:no_comma", False, False),
            ("length_constraints:number_words", True, True),
        )
    )
    # loose (IFEval): the first line dropped, as a "Sure, here it is:" opener would be
    v = verify("Sure, here it is:\nfour short words here", "p", NO_COMMA_SHORT)
    assert not v.strict and v.loose
    assert not verify("", "p", LOWER).loose  # an empty answer follows nothing


@pytest.mark.parametrize(
    "line, needle",
    [
        (
            {"prompt": "x", "instruction_id_list": ["nope:nothing"], "kwargs": [{}]},
            "unknown instruction id 'nope:nothing'",
        ),
        (
            {"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]},
            "kwargs must be a list of 1",
        ),
        ({"prompt": "x", "instruction_id_list": [], "kwargs": []}, "non-empty list"),
        (
            {
                "prompt": "x",
                "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"relation": "about", "num_words": 3}],
            },
            "cannot be built from kwargs",
        ),
    ],
)
def test_bad_checks_are_one_line_naming_the_line(line, needle):
    with pytest.raises(MrtkError, match=needle) as e:
        parse_checks(line, "prompts file p.jsonl: line 3")
    assert "line 3" in str(e.value) and "\n" not in str(e.value)


def test_a_pool_line_without_checks_has_none():
    assert parse_checks({"prompt": "x"}, "here") is None


# -- the numbers, on hand cases -------------------------------------------------------------------
# prompt p: responses a (pass), b (fail), c (fail); prompt q: d (pass), e (pass)
V = [
    {"response_id": "a", "prompt_id": "p", "strict": True, "loose": True},
    {"response_id": "b", "prompt_id": "p", "strict": False, "loose": True},
    {"response_id": "c", "prompt_id": "p", "strict": False, "loose": False},
    {"response_id": "d", "prompt_id": "q", "strict": True, "loose": True},
    {"response_id": "e", "prompt_id": "q", "strict": True, "loose": True},
]


def j(jid, rid, score):
    return {"judgement_id": jid, "response_id": rid, "score": score}


def test_actor_pass_share_averages_a_prompts_samples_first():
    numbers = truth.actor_numbers(V)
    assert numbers["actor_strict"][0] == pytest.approx((1 / 3 + 1) / 2) and numbers["actor_strict"][3] == 2
    assert numbers["actor_loose"][0] == pytest.approx((2 / 3 + 1) / 2)


def test_judge_accuracy_by_hand():
    """p's (pass, fail) pairs: (a, b) and (a, c); q has none. Mean valid scores: a 3, b 3 (a tie:
    0.5), c 1 (right: 1). An unparsed judgement (None) is left out of the mean."""
    judgements = [
        j("a0", "a", 2.0),
        j("a1", "a", 4.0),
        j("b0", "b", 3.0),
        j("b1", "b", None),
        j("c0", "c", 1.0),
        j("d0", "d", 5.0),
        j("e0", "e", 0.0),
    ]
    value, _, _, n = truth.iteration_numbers(V, judgements, [], [])["judge_accuracy"]
    assert (value, n) == (0.75, 2)


def test_meta_accuracy_by_hand():
    """Response a passes: the higher score is closer to the truth; c fails: the lower one."""
    judgements = [j("a0", "a", 2.0), j("a1", "a", 4.0), j("a2", "a", 4.0), j("c0", "c", 1.0), j("c1", "c", 3.0)]
    battles = [
        {"response_id": "a", "judgement_a": "a0", "judgement_b": "a1", "winner": "a1"},  # right
        {"response_id": "a", "judgement_a": "a1", "judgement_b": "a0", "winner": "a0"},  # wrong
        {"response_id": "a", "judgement_a": "a1", "judgement_b": "a2", "winner": "a1"},  # equal scores: no truth
        {"response_id": "c", "judgement_a": "c0", "judgement_b": "c1", "winner": "c0"},  # right
        {"response_id": "c", "judgement_a": "c1", "judgement_b": "c0", "winner": None},  # unparsed: left out
    ]
    value, _, _, n = truth.iteration_numbers(V, judgements, battles, [])["meta_accuracy"]
    assert (value, n) == (pytest.approx(2 / 3), 3)


def test_right_and_wrong_pairs_by_hand():
    pairs = [
        {"chosen_id": "a", "rejected_id": "b"},  # right
        {"chosen_id": "c", "rejected_id": "a"},  # wrong
        {"chosen_id": "d", "rejected_id": "e"},  # pass-pass: neither
        {"chosen_id": "a", "rejected_id": "zz"},  # unchecked side: left out
    ]
    numbers = truth.iteration_numbers(V, [], [], pairs)
    assert numbers["right_pairs"][0] == pytest.approx(1 / 3) and numbers["right_pairs"][3] == 3
    assert numbers["wrong_pairs"][0] == pytest.approx(1 / 3)


def test_heldout_change_is_paired_over_prompts():
    def answers(shares):
        return [
            {"response_id": f"{p}{k}", "prompt_id": p, "strict": k < 4 * s, "loose": True}
            for p, s in shares.items()
            for k in range(4)
        ]

    first = answers({f"p{i}": 0.25 for i in range(12)})
    now = answers({f"p{i}": 0.75 if i < 6 else 0.25 for i in range(12)})
    numbers = truth.heldout_numbers(now, first, first)
    diff, lo, hi, n = numbers["heldout_change_M1"]
    assert diff == pytest.approx(0.25) and n == 12 and 0 < lo <= diff <= hi
    assert "heldout_change_M1 0.25" in truth.line("M2", numbers)
    same = truth.heldout_numbers(first, first, first)
    assert "(no detectable change)" in truth.line("M2", same) or same["heldout_change_M1"][1] is None


# -- the loop ---------------------------------------------------------------------------------------
# the scripted policy writes lowercase words without commas, some with "clear", of varying length
POOL = [
    {
        "prompt": f"Task {i}: describe a place you like.",
        "instruction_id_list": ["keywords:existence" if i % 2 else "length_constraints:number_words"],
        "kwargs": [{"keywords": ["clear"]} if i % 2 else {"relation": "less than", "num_words": 8}],
    }
    for i in range(14)
]


def start(tmp_path, **sections):
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(x) + "\n" for x in POOL))
    raw = {**TINY, "prompts": {"file": "pool.jsonl", "per_iteration": 4, "heldout": 4}, **sections}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    inputs = check_inputs(validate_config(raw), tmp_path)
    return new_run(inputs.cfg, str(path), tmp_path / "runs"), inputs


def run(store, inputs):
    Loop(store, inputs, open_policy=ScriptedPolicy().opener, train=scripted_train).run()


def test_truth_per_iteration_and_the_heldout_slice(tmp_path):
    store, inputs = start(tmp_path)
    held = {p["prompt_id"] for p in inputs.heldout}
    run(store, inputs)
    db = store.run_dir / "mrtk.duckdb"
    assert rows(db, "SELECT count(*) FROM prompts WHERE prompt_id IN (SELECT unnest(?))", [sorted(held)]) == [(0,)]
    # M1, M2 and the final M3 answered the slice, K each, the same seeds for every model
    assert rows(db, "SELECT iteration, count(*) FROM heldout_responses GROUP BY 1 ORDER BY 1") == [
        (1, 8),
        (2, 8),
        (3, 8),
    ]
    assert rows(db, "SELECT count(DISTINCT seed) FROM heldout_responses") == [(8,)]
    assert rows(db, "SELECT source, count(*) FROM verdicts GROUP BY 1 ORDER BY 1") == [("heldout", 24), ("loop", 16)]
    metrics = dict.fromkeys(
        m for (m,) in rows(db, "SELECT metric FROM eval_results WHERE eval = 'truth' AND iteration = 2")
    )
    assert {
        "actor_strict",
        "actor_loose",
        "judge_accuracy",
        "meta_accuracy",
        "right_pairs",
        "heldout_strict",
        "heldout_change_M1",
        "heldout_change_prev",
    } <= set(metrics)
    assert rows(db, "SELECT DISTINCT judge FROM eval_results WHERE eval = 'truth' AND iteration = 3") == [("heldout",)]
    # the stored numbers are evals/truth.py's on the stored rows (defined once)
    again = truth.actor_numbers(store.verdicts(1, "loop"))["actor_strict"]
    assert rows(
        db, "SELECT value, n FROM eval_results WHERE eval = 'truth' AND iteration = 1 AND metric = 'actor_strict'"
    ) == [(pytest.approx(again[0]), again[3])]
    # the iteration table, mrtk query and mrtk report show them
    from rich.console import Console

    from mrtk.present.summary import iteration_table

    console = Console(record=True, width=200)
    console.print(iteration_table(store, 2))
    text = console.export_text()
    assert "truth: judge accuracy" in text and "truth: held-out vs M1" in text
    res = mrtk(
        "query", "@truth", "-p", "iteration=2", "--format", "csv", "--run", str(store.run_dir), cwd=tmp_path, check=True
    )
    assert "judge_accuracy" in res.stdout and "heldout_change_M1" in res.stdout
    mrtk("report", str(store.run_dir), "--out", str(tmp_path / "r.html"), cwd=tmp_path, check=True)
    assert "id='truth'" in (tmp_path / "r.html").read_text() or 'id="truth"' in (tmp_path / "r.html").read_text()
    # a finished run resumed does nothing more
    before = rows(db, "SELECT count(*) FROM heldout_responses")
    store2, cfg, config_dir = open_run(store.run_dir)
    run(store2, check_inputs(cfg, config_dir))
    assert rows(db, "SELECT count(*) FROM heldout_responses") == before


def test_the_verifier_arm_scores_by_the_checks_and_runs_no_judge(tmp_path):
    store, inputs = start(tmp_path, rewards="verifier", pairs={"judge_iterations": [], "judge_share_cap": None})
    run(store, inputs)
    db = store.run_dir / "mrtk.duckdb"
    assert rows(db, "SELECT count(*) FROM meta_judgements") == [(0,)]
    assert rows(db, "SELECT DISTINCT template, model_version FROM judgements") == [("verifier", "verifier")]
    # each judgement's score is 5 x its response's strict share of instructions (one each here)
    assert rows(
        db,
        """SELECT count(*) FROM judgements j JOIN verdicts v USING (response_id)
                       WHERE j.score != 5 * v.partial_strict""",
    ) == [(0,)]
    assert rows(db, "SELECT count(*) FROM pairs WHERE kind = 'judge'") == [(0,)]


def test_the_verifier_arm_refuses_what_does_not_apply(tmp_path):
    with pytest.raises(Exception, match="pairs.judge_iterations must be"):
        validate_config({**TINY, "rewards": "verifier"})
    res = mrtk("run", "--set", "rewards=verifier", "--set", "pairs.judge_iterations=[]", cwd=tmp_path)
    assert res.returncode == 2 and "have none" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_study_sets_the_verifier_arm_beside_the_self_judge_with_paired_comparisons(tmp_path):
    from mrtk.present.study import run_study
    from mrtk.ui import QuietUI

    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(x) + "\n" for x in POOL))
    base = {
        **TINY,
        "prompts": {"file": "pool.jsonl", "per_iteration": 4, "heldout": 4},
        "pairs": {"judge_share_cap": None},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "base": "base.yaml",
                "variants": {"self": {}, "verifier": {"rewards": "verifier", "pairs.judge_iterations": []}},
            }
        )
    )
    result = run_study(
        tmp_path / "study.yaml", tmp_path / "out", QuietUI(), open_policy=ScriptedPolicy().opener, train=scripted_train
    )
    models = [(r["variant"], r["model"]) for r in result["truth"]]
    assert models == [(v, f"M{i}") for v in ("self", "verifier") for i in (1, 2, 3)]
    assert [c["model"] for c in result["compared"]] == ["M1", "M2", "M3"]
    # M1 is the same model with the same held-out seeds in both arms: no difference at all
    assert result["compared"][0]["diff"][0] == 0.0
    md = (tmp_path / "out" / "study.md").read_text()
    assert "Against the truth" in md and "self - verifier" in md


def test_the_shipped_pools_load():
    """verifiable_small: 144 prompts, every one checked. IFEval's 541: loaded, or (where NLTK's
    punkt_tab data is missing, as on a new machine) refused in one line naming the download."""
    from mrtk.data import load_pool, resolve_data_file

    small = load_pool(resolve_data_file("verifiable_small.jsonl", None))
    assert len(small) == 144 and all(p["checks"] for p in small)
    try:
        ifeval = load_pool(resolve_data_file("ifeval_input_data.jsonl", None))
    except MrtkError as e:
        assert "punkt_tab" in str(e) and "\n" not in str(e)
    else:
        assert len(ifeval) == 541
