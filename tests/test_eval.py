"""`mrtk eval`: statistics against published numbers, the LiteLLM client (cache, cost ledger,
retries, budget, secrets) and the commands end to end.

LiteLLM calls use its `mock_response` argument: LiteLLM's real code path (request building,
response objects, usage and cost from its bundled price map) with no network call. No paid
API runs here. Data files come from ../shared/data and tests skip when they are absent.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import TINY, mrtk, rows

from mrtk.errors import MrtkError
from mrtk.evals import metrics
from mrtk.parse import parse_arena
from mrtk.store import RunStore
from mrtk.store.db import DB_NAME

FAKE_KEY = "sk-fake-0123456789abcdefXYZ"


@pytest.mark.parametrize(
    "model",
    [
        "FuseChat-Llama-3.1-8B-Instruct",
        "OpenHermes-2.5-Mistral-7B",
        "alpaca-7b",
        "claude-2.1",
        "gemma-7b-it",
        "gpt-3.5-turbo-1106",
    ],
)
def test_win_rate_and_standard_error_reproduce_the_alpacaeval_leaderboard(model, shared_data):
    """Real GPT-4 Turbo preferences (1..2, 2 = the model wins) -> the leaderboard's numbers to 0.01."""
    board = {
        r[""]: r
        for r in csv.DictReader(shared_data("alpaca_eval/leaderboard_weighted_alpaca_eval_gpt4_turbo.csv").open())
    }
    prefs = [
        json.loads(line)["preference"] - 1.0
        for line in shared_data(f"alpaca_eval/gpt4_turbo_annotations/{model}.jsonl").open()
    ]
    got = metrics.win_rate(prefs)
    assert got["win_rate"] == pytest.approx(float(board[model]["win_rate"]), abs=0.01)
    assert got["standard_error"] == pytest.approx(float(board[model]["standard_error"]), abs=0.01)
    assert got["n_total"] == int(board[model]["n_total"])


def test_length_control_removes_a_pure_length_effect():
    # Equal lengths: nothing to control, LC equals the raw win rate.
    prefs = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0]
    assert metrics.length_controlled_win_rate(prefs, [100] * 6, [100] * 6) == pytest.approx(
        metrics.win_rate(prefs)["win_rate"], abs=1e-6
    )
    # The policy wins exactly when it is longer: length explains the wins, LC falls well below the raw 50%.
    prefs = [1.0, 0.0] * 20
    policy = [300, 100] * 20
    lc = metrics.length_controlled_win_rate(prefs, policy, [200] * 40)
    assert (
        lc is not None and abs(lc - 50.0) < 1.0
    )  # symmetric +-100 chars: the length term carries it all, the base is 50%
    skewed = metrics.length_controlled_win_rate([1.0, 1.0, 1.0, 0.0] * 10, [400, 400, 400, 100] * 10, [200] * 40)
    assert skewed < 75.0  # raw 75%, all wins longer: control lowers it


def test_small_statistics_hand_computed():
    lo, hi = metrics.wilson(8, 10)  # textbook Wilson interval for 8/10
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert metrics.ranks([5, 1, 5, 3]) == [3.5, 1.0, 3.5, 2.0]
    a = metrics.agreement(["a", "b", "a", "b"], ["a", "a", None, "b"])
    assert (a["agreement"], a["ties"], a["agreement_without_ties"]) == (
        0.625,
        1,
        pytest.approx(2 / 3),
    )  # a tie counts 0.5
    # the paper's definition (Table 3): 10 pairs, 6 agree, 2 disagree, 2 tied -> 0.700; without ties 6/8
    ten = metrics.agreement(["a"] * 10, ["a"] * 6 + ["b"] * 2 + [None] * 2)
    assert (ten["agreement"], ten["agreement_without_ties"], ten["tie_rate"]) == (pytest.approx(0.7), 0.75, 0.2)
    bt = metrics.bt_score([1.0, 0.0, 1.0, 1.0], bootstrap=100)
    assert bt["score"] == 75.0 and bt["ci_low"] <= 75.0 <= bt["ci_high"]


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("... [[A>>B]]", "A>>B"),
        ("[[B>A]]", "A<B"),
        ("[[B>>A]] but quoted [[A>B]] last", "A>B"),
        ("My final verdict is tie: [[A=B]]", "A=B"),
        ("no label", None),
    ],
)
def test_arena_verdicts(text, verdict):
    assert parse_arena(text).value == verdict


@pytest.fixture()
def store(tmp_path):
    s = RunStore(tmp_path / "run")
    s.migrate()
    return s


def judge(store, reply, **kw):
    from mrtk.evals.external import ExternalJudge

    return ExternalJudge(store, "gpt-4-1106-preview", mock_response=reply, backoff_s=0.0, **kw)


def test_external_calls_are_logged_cached_and_costed(store):
    j = judge(store, "Output A is better.\nWinner: Output A")
    msgs = [{"role": "user", "content": "Which is better, A or B?"}]
    first = j.ask(msgs)
    assert first.ok and not first.cache_hit and first.cost_usd > 0 and "Winner: Output A" in first.text
    again = judge(store, "a different reply that must not be used").ask(msgs)
    assert again.cache_hit and again.cost_usd == 0.0 and again.text == first.text  # same content, served from DuckDB
    [row] = store.fetch("SELECT * FROM eval_calls")
    assert (
        row["status"] == "ok"
        and row["model"] == "gpt-4-1106-preview"
        and row["cost_usd"] == pytest.approx(first.cost_usd)
    )
    assert row["prompt_tokens"] > 0 and json.loads(row["messages"]) == msgs


def test_rate_limits_are_retried_then_recorded_as_failures(store):
    import litellm

    j = judge(store, litellm.RateLimitError("slow down", llm_provider="openai", model="gpt-4-1106-preview"), retries=2)
    reply = j.ask([{"role": "user", "content": "x"}])
    assert not reply.ok and reply.text is None and "RateLimitError" in reply.error
    [row] = store.fetch("SELECT status, attempts, raw_reply FROM eval_calls")
    assert (row["status"], row["attempts"], row["raw_reply"]) == ("failed", 3, None)
    timeout = judge(store, litellm.Timeout("too slow", model="gpt-4-1106-preview", llm_provider="openai"), retries=1)
    assert not timeout.ask([{"role": "user", "content": "y"}]).ok
    # a later success replaces the failure under the same key
    assert judge(store, "Winner: Output B").ask([{"role": "user", "content": "x"}]).ok
    assert store.fetch("SELECT status FROM eval_calls WHERE attempts = 1 AND raw_reply = 'Winner: Output B'")


def test_max_cost_stops_before_the_budget_is_exceeded(store):
    j = judge(
        store, "Winner: Output A", max_cost=0.016, max_tokens=512
    )  # a call may cost up to 0.0154 USD (512 output tokens)
    j.ask([{"role": "user", "content": "one"}])
    with pytest.raises(MrtkError, match=r"--max-cost 0.016 USD reached"):
        j.ask([{"role": "user", "content": "two"}])
    assert len(store.fetch("SELECT * FROM eval_calls")) == 1 and j.spent <= 0.016


def test_external_model_refused_for_training(tmp_path):
    res = mrtk("run", "--set", "model=openai/gpt-4o", cwd=tmp_path)
    assert res.returncode == 2 and "external models are for evaluation only" in res.stderr
    res = mrtk("run", "--set", "judge.model=gpt-4-1106-preview", cwd=tmp_path)
    assert (
        res.returncode == 2 and "external judges are for evaluation only" in res.stderr and res.stderr.count("\n") == 1
    )


def test_eval_alpaca_end_to_end_without_leaking_the_key(run_copy, monkeypatch):
    """Policy answers generated by the real model, judged through LiteLLM's mock path, every row in
    DuckDB; the API key in the environment appears nowhere in the run directory. The data is
    AlpacaEval's format (a JSON list of instruction + reference output), written here."""
    data = run_copy.parent / "alpaca.json"
    data.write_text(
        json.dumps(
            [
                {"instruction": q, "output": a, "generator": "reference"}
                for q, a in [
                    ("Name three primary colours.", "Red, yellow and blue."),
                    ("What is 12 times 12?", "144."),
                    ("Give a synonym of 'happy'.", "Joyful."),
                ]
            ]
        )
    )
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    args = [
        "eval",
        "alpaca",
        "--run",
        str(run_copy),
        "--data",
        str(data),
        "--limit",
        "3",
        "--max-new-tokens",
        "12",
        "--both-orders",
        "--annotator",
        "mrtk",
        "--dry-run-reply",
        "Both are fine; A is clearer.\nWinner: Output A",
        "-q",
    ]
    res = mrtk(*args, cwd=run_copy.parent, check=True)
    assert "win_rate" in res.stdout and "6 calls" in " ".join(res.stdout.split())
    db = run_copy / DB_NAME
    assert rows(db, "SELECT count(*), count(DISTINCT example_id), min(n_chars) > 0 FROM eval_outputs") == [(3, 3, True)]
    # both orders, the judge always says A: the policy wins exactly its policy-first games, so every preference is 0.5
    assert rows(
        db,
        "SELECT count(*), avg(preference), count(*) FILTER (WHERE raw_text LIKE '%Winner: Output A%') FROM eval_items",
    ) == [(6, 0.5, 6)]
    assert dict(rows(db, "SELECT metric, value FROM eval_results WHERE eval = 'alpaca'"))["win_rate"] == pytest.approx(
        50.0
    )
    again = mrtk(*args, cwd=run_copy.parent, check=True)
    assert "0 calls" in " ".join(again.stdout.split())  # everything judged already: nothing is asked twice
    for path in run_copy.rglob("*"):
        if path.is_file() and not path.is_symlink() and "models" not in path.parts:
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert FAKE_KEY not in res.stdout + res.stderr


def test_eval_judge_end_to_end(run_copy, shared_data):
    data = shared_data("judge_dev/llmbar_and_mtbench_human_dev.jsonl")
    res = mrtk(
        "eval",
        "judge",
        str(data),
        "--run",
        str(run_copy),
        "--limit",
        "4",
        "--n",
        "1",
        "-q",
        cwd=run_copy.parent,
        check=True,
    )
    assert "agreement" in res.stdout and "95% interval" in res.stdout
    db = run_copy / DB_NAME
    assert rows(
        db,
        "SELECT count(*), count(raw_text), count(score) FROM eval_items WHERE eval = 'judge:llmbar_and_mtbench_human_dev'",
    ) == [(8, 8, 8)]
    [(value, lo, hi, n)] = rows(db, "SELECT value, ci_low, ci_high, n FROM eval_results WHERE metric = 'agreement'")
    assert n == 4 and lo <= value <= hi and (value * 8).is_integer()  # hits and half-credit ties over 4 pairs
    # the shipped probe set by name, from a folder that is not the repository
    mrtk(
        "eval",
        "judge",
        "probe_human.jsonl",
        "--run",
        str(run_copy),
        "--limit",
        "2",
        "--n",
        "1",
        "-q",
        cwd=run_copy.parent,
        check=True,
    )
    assert rows(db, "SELECT count(*) FROM eval_items WHERE eval = 'judge:probe_human'") == [(4,)]


def test_eval_judge_reads_every_human_format(shared_data):
    from mrtk.data import load_human_pairs

    for path in (
        "judge_dev/llmbar_and_mtbench_human_dev.jsonl",
        "judge_dev/oasst_rankings/oasst_en100_pairs_dev.jsonl",
        "judge_dev/pandalm_testset-v1.json",
        "judge_dev/oasst_rankings/oasst_en100_ranked_lists_dev.jsonl",
    ):
        pairs, lists = load_human_pairs(str(shared_data(path)))
        assert pairs or lists
        # (PandaLM has some empty responses: real data, kept as they are)
        assert all(
            p["label"] in ("a", "b") and isinstance(p["a"], str) and isinstance(p["b"], str) and p["question"]
            for p in pairs
        )
        assert all(len(x["replies"]) >= 2 for x in lists)
    assert math.isclose(len(load_human_pairs(str(shared_data("judge_dev/llmbar_and_mtbench_human_dev.jsonl")))[0]), 119)


def test_training_code_never_imports_litellm():
    import subprocess
    import sys

    code = "import sys, mrtk.cli, mrtk.loop, mrtk.rejudge, mrtk.present.report; sys.exit('litellm' in sys.modules or 'sglang' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_bad_gateway_and_subclasses_are_retried(store):
    """LiteLLM raises BadGatewayError for a 502 and has RateLimitError subclasses: both retried."""
    import litellm

    bad = litellm.BadGatewayError("upstream down", model="gpt-4-1106-preview", llm_provider="openai")
    reply = judge(store, bad, retries=2).ask([{"role": "user", "content": "502"}])
    assert not reply.ok and "BadGatewayError" in reply.error
    assert store.fetch("SELECT attempts FROM eval_calls WHERE error LIKE 'BadGatewayError%'")[0]["attempts"] == 3
    from mrtk.evals.external import retryable

    # LiteLLM's mock path maps a raised error onto its base classes, so the subclass is checked directly
    sub = litellm.RouterRateLimitError(
        model="gpt-4-1106-preview", cooldown_time=1.0, enable_pre_call_checks=False, cooldown_list=[]
    )
    assert retryable(sub) and not retryable(litellm.BadRequestError("bad", model="m", llm_provider="openai"))
    final = litellm.BadRequestError("bad", model="gpt-4-1106-preview", llm_provider="openai")
    judge(store, final, retries=3).ask([{"role": "user", "content": "400"}])
    assert store.fetch("SELECT attempts FROM eval_calls WHERE error LIKE 'BadRequestError%'")[0]["attempts"] == 1


def test_o_series_judges_drop_unsupported_params(store):
    """o-series models refuse `temperature`; drop_params lets LiteLLM leave it out instead of failing."""
    from mrtk.evals.external import ExternalJudge

    reply = ExternalJudge(store, "o3-mini", mock_response="Winner: Output A", backoff_s=0.0, retries=0).ask(
        [{"role": "user", "content": "o"}]
    )
    assert reply.ok, reply.error


def test_dry_run_replies_are_never_priced(store):
    from mrtk.evals.external import ExternalJudge

    j = ExternalJudge(
        store, "gpt-4-1106-preview", mock_response="Winner: Output A", dry_run=True, max_cost=1e-9, backoff_s=0.0
    )
    for k in range(3):
        assert j.ask([{"role": "user", "content": f"dry {k}"}]).cost_usd == 0.0
    assert j.spent == 0.0 and store.fetch("SELECT sum(cost_usd) AS c FROM eval_calls")[0]["c"] == 0.0


JUDGE_CONFIG = """name: judgment config file for a test, in Arena-Hard-Auto's format
bench_name: arena-hard-v0.1
judge_model: gpt-4-1106-preview
pairwise: True
temperature: 0
max_tokens: 2048
regex_pattern: \\[\\[([AB<>=]+)\\]\\]
system_prompt: "You are the test judge. End with [[A>B]] or a similar label."
prompt_template: ["<|User Prompt|>\\n{question_1}\\n\\n<|A|>\\n{answer_1}\\n<|B|>\\n{answer_2}"]
"""


def test_arena_judge_config_is_what_is_sent(run_copy):
    """--judge-config: the request carries the file's system prompt, template and max_tokens; the
    verdict is read as Arena-Hard-Auto reads it; the score and interval are the hand computation."""
    from mrtk.evals import metrics
    from mrtk.evals.arena_config import load_judge_config

    cfg = run_copy.parent / "judge_config.yaml"
    cfg.write_text(JUDGE_CONFIG)
    judge = load_judge_config(cfg)
    assert judge.verdict("first [[A>B]] then [[B>A]]") == (None, "several_different_verdicts")
    assert judge.verdict("[[B>>A]] and again [[B>>A]]") == ("A<<B", "ok") and judge.verdict("no label") == (
        None,
        "no_arena_verdict",
    )
    qs, base = run_copy.parent / "q.jsonl", run_copy.parent / "base.jsonl"
    qs.write_text(
        "".join(
            json.dumps({"uid": f"u{i}", "prompt": p}) + "\n"
            for i, p in enumerate(["Add 2 and 2.", "Name a colour.", "Say hi."])
        )
    )
    base.write_text(
        "".join(
            json.dumps(
                {
                    "uid": f"u{i}",
                    "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": {"answer": a}}],
                }
            )
            + "\n"
            for i, a in enumerate(["4", "Red", "Hi"])
        )
    )
    res = mrtk(
        "eval",
        "arena-hard",
        "--run",
        str(run_copy),
        "--questions",
        str(qs),
        "--baseline",
        str(base),
        "--judge-config",
        str(cfg),
        "--max-new-tokens",
        "12",
        "--dry-run-reply",
        "Both fine. My final verdict: [[A>B]]",
        "-q",
        cwd=run_copy.parent,
        check=True,
    )
    assert "judge_config.yaml" in res.stdout.replace("\n", "")
    db = run_copy / DB_NAME
    calls = rows(db, "SELECT messages, params FROM eval_calls")
    assert len(calls) == 6
    for messages, params in calls:
        messages, params = json.loads(messages), json.loads(params)
        assert messages[0] == {
            "role": "system",
            "content": "You are the test judge. End with [[A>B]] or a similar label.",
        }
        assert messages[1]["content"].startswith("<|User Prompt|>\n") and "<|A|>" in messages[1]["content"]
        assert params["max_tokens"] == 2048 and params["temperature"] == 0
    # the judge always says A>B: the policy wins its policy-first games and loses the others
    prefs = [1.0, 0.0] * 3
    hand = metrics.bt_score(prefs, seed=TINY["seed"])
    [(value, lo, hi)] = rows(
        db, "SELECT value, ci_low, ci_high FROM eval_results WHERE eval = 'arena-hard' AND metric = 'score'"
    )
    assert (value, lo, hi) == (50.0, hand["ci_low"], hand["ci_high"])


def test_arena_asks_once_more_when_no_verdict_label(store, tmp_path):
    """Arena-Hard-Auto's gen_judgment.py: no label in the reply -> the same conversation plus
    "continue your judgment ..." once more; the verdict is read from both replies joined. Each call
    is a logged LiteLLM call (its mock path), the second carrying the first reply as an assistant turn."""
    from mrtk.evals.arena_config import CONTINUE, load_judge_config

    cfg = tmp_path / "judge_config.yaml"
    cfg.write_text(JUDGE_CONFIG)
    arena = load_judge_config(cfg)
    real = judge(store, None, dry_run=True)

    class ByTurn:  # the real judge, its mock reply chosen by the conversation's length
        def __init__(self, replies):
            self.replies = replies

        def ask(self, messages):
            real.mock_response = self.replies[(len(messages) - 2) // 2]
            return real.ask(messages)

    messages = arena.render("Add 2 and 2.", "4", "5")
    reply = arena.ask(ByTurn(["A is right, B is wrong.", "My final verdict: [[A>>B]]"]), messages)
    assert reply.text == "A is right, B is wrong.\nMy final verdict: [[A>>B]]" and arena.verdict(reply.text) == (
        "A>>B",
        "ok",
    )
    calls = sorted((json.loads(r["messages"]) for r in store.fetch("SELECT messages FROM eval_calls")), key=len)
    assert len(calls) == 2 and calls[1] == messages + [
        {"role": "assistant", "content": "A is right, B is wrong."},
        {"role": "user", "content": CONTINUE},
    ]
    # a label in the first reply: one call; two attempts without one: no verdict, both texts kept
    assert arena.ask(ByTurn(["[[B>A]]"]), arena.render("Q2", "a", "b")).text == "[[B>A]]"
    reply = arena.ask(ByTurn(["hmm", "still thinking"]), arena.render("Q3", "a", "b"))
    assert reply.text == "hmm\nstill thinking" and arena.verdict(reply.text) == (None, "no_arena_verdict")


def test_arena_config_without_system_prompt_is_refused(tmp_path):
    """The newer Arena-Hard-Auto YAML (config/arena-hard-v0.1.yaml) has no system prompt; sending
    its user template alone would not be the benchmark's judge."""
    from mrtk.evals.arena_config import load_judge_config

    cfg = tmp_path / "arena-hard-v0.1.yaml"
    cfg.write_text(
        "judge_model: gpt-4.1\ntemperature: 0.0\nmax_tokens: 16000\n"
        "prompt_template: \"<|User Prompt|>\\n{QUESTION}\\n\\n<|The Start of Assistant A's Answer|>\\n{ANSWER_A}\\n"
        "<|The End of Assistant A's Answer|>\\n\\n<|The Start of Assistant B's Answer|>\\n{ANSWER_B}\\n"
        "<|The End of Assistant B's Answer|>\"\n"
    )
    with pytest.raises(MrtkError, match="no system_prompt .*add `system_prompt: ...`"):
        load_judge_config(cfg)


def test_audit_through_litellm_never_reaches_pairs(run_copy):
    """`mrtk eval audit`: the external judge's scores of sampled loop responses are eval rows with
    their calls and costs; judgements and pairs are exactly what they were."""
    db = run_copy / DB_NAME
    before = {t: rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in ("judgements", "pairs", "meta_judgements")}
    res = mrtk(
        "eval",
        "audit",
        "--run",
        str(run_copy),
        "--sample",
        "8",
        "--dry-run-reply",
        "Relevant and clear.\nScore: 4",
        "-q",
        cwd=run_copy.parent,
        check=True,
    )
    assert "pairs_reversed" in res.stdout and "mean_bias" in res.stdout
    assert {t: rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in before} == before
    n_items = rows(db, "SELECT count(*), count(score), count(DISTINCT call_key) FROM eval_items WHERE eval = 'audit'")[
        0
    ]
    assert n_items[0] == n_items[1] > 0 and rows(db, "SELECT count(*) FROM eval_calls")[0][0] == n_items[2]
    assert rows(db, "SELECT DISTINCT json_extract(params, '$.dry_run')::BOOLEAN FROM eval_calls") == [(True,)]
    # the external judge says 4 for every response: it reverses no pair, and the bias is the self-judge's mean minus 4
    results = {
        (it, m): v for it, m, v in rows(db, "SELECT iteration, metric, value FROM eval_results WHERE eval = 'audit'")
    }
    assert all(v == 0.0 for (_, m), v in results.items() if m == "pairs_reversed")
    sampled = [r[0] for r in rows(db, "SELECT example_id FROM eval_items WHERE eval = 'audit'")]
    self_mean = rows(
        db,
        f"""SELECT avg(s) - 4 FROM (SELECT response_id, avg(score) AS s FROM judgements WHERE source = 'loop'
                            AND score IS NOT NULL AND response_id IN ({", ".join(repr(x) for x in sampled)}) AND iteration = 1 GROUP BY 1)""",
    )[0][0]
    assert results[(1, "mean_bias")] == pytest.approx(self_mean)


def test_eval_prints_the_change_from_the_previous_iteration(run_copy):
    """Iteration 1 after iteration 0 on the same examples: the win-rate change with its paired bootstrap interval."""
    data = run_copy.parent / "alpaca.json"
    data.write_text(json.dumps([{"instruction": f"Say the number {k}.", "output": str(k)} for k in range(4)]))
    base = [
        "eval",
        "alpaca",
        "--run",
        str(run_copy),
        "--data",
        str(data),
        "--max-new-tokens",
        "8",
        "--annotator",
        "mrtk",
        "--dry-run-reply",
        "Winner: Output A",
        "-q",
    ]
    mrtk(*base, "--iteration", "0", cwd=run_copy.parent, check=True)
    res = mrtk(*base, "--iteration", "1", cwd=run_copy.parent, check=True)
    db = run_copy / DB_NAME
    [(v, lo, hi, n)] = rows(
        db,
        "SELECT value, ci_low, ci_high, n FROM eval_results WHERE iteration = 1 AND metric = "
        "'win_rate_change_from_previous_iteration'",
    )
    # the judge always says A: the policy wins its policy-first games in both iterations, the same seeded orders: no change;
    # four paired examples are too few for an interval or a verdict
    assert (v, n, lo, hi) == (0.0, 4, None, None)
    assert "paired bootstrap over 4: too few pairs (4; a verdict needs 10)" in " ".join(res.stdout.split())


def test_eval_answers_with_the_runs_own_actor_template(tmp_path):
    """A run whose actor template lives in its own template folder: `mrtk eval` answers with that
    template (before the fix it looked only in the shipped prompts/ and stopped: not found)."""
    from mrtk.config import validate_config
    from mrtk.runs import new_run

    mine = tmp_path / "my_prompts"
    mine.mkdir()
    (mine / "terse_actor.md").write_text(
        "---\nname: terse_actor\nrole: actor\nvariables: [prompt]\nparser: none\n---\nAnswer briefly: {{prompt}}\n"
    )
    cfg = validate_config(
        {
            **TINY,
            "actor": {**TINY["actor"], "template": "terse_actor"},
            "prompts": {**TINY["prompts"], "template_dirs": [str(mine)]},
        }
    )
    run = new_run(cfg, str(tmp_path / "cfg.yaml"), tmp_path / "runs").run_dir
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "Name a colour.", "output": "Red."}]))
    mrtk(
        "eval",
        "alpaca",
        "--run",
        str(run),
        "--iteration",
        "0",
        "--data",
        str(data),
        "--max-new-tokens",
        "4",
        "--annotator",
        "mrtk",
        "--dry-run-reply",
        "Winner: Output A",
        "-q",
        cwd=tmp_path,
        check=True,
    )
    assert rows(run / DB_NAME, "SELECT count(*) FROM eval_outputs") == [(1,)]


def test_eval_judge_on_ranked_lists_records_table_7s_numbers(run_copy, shared_data):
    data = shared_data("judge_dev/oasst_rankings/oasst_en100_ranked_lists_dev.jsonl")
    mrtk(
        "eval",
        "judge",
        str(data),
        "--run",
        str(run_copy),
        "--limit",
        "2",
        "--n",
        "1",
        "-q",
        cwd=run_copy.parent,
        check=True,
    )
    got = dict(rows(run_copy / DB_NAME, "SELECT metric, n FROM eval_results WHERE eval LIKE 'judge:oasst%'"))
    assert {"spearman", "list_agreement", "list_agreement_without_ties", "list_tie_rate"} <= set(got)
    assert got["list_agreement"] >= 2  # at least one pair from each of the two lists


def test_table_7_agreement_on_a_ranked_list_by_hand():
    """One OASST list ranked x (0, best), y (1), z (2); the judge's mean scores x 3, y 4, z 4:
    pairs (x, y) wrong, (x, z) wrong, (y, z) a tie -> agreement 0.5/3, without ties 0/2, ties 1/3."""
    from mrtk.evals.judge_eval import ranked_pairs
    from mrtk.rows import answer_id

    lists = [{"example_id": "e", "replies": [("x", 0), ("y", 1), ("z", 2)]}]
    scores = {answer_id("e", "0"): 3.0, answer_id("e", "1"): 4.0, answer_id("e", "2"): 4.0}
    labels, preds = ranked_pairs(lists, scores)
    assert labels == ["a", "a", "a"] and preds == ["b", "b", None]
    a = metrics.agreement(labels, preds)
    assert (a["agreement"], a["agreement_without_ties"], a["ties"]) == (pytest.approx(0.5 / 3), 0.0, 1)
    # equal human ranks make no pair
    assert ranked_pairs([{"example_id": "f", "replies": [("p", 1), ("q", 1)]}], {}) == ([], [])


def test_ranked_list_numbers_by_hand():
    """Three lists against the judge's mean scores. e: x (0), y (1), z (2) scored 3, 4, 4; f: p (0), q (1)
    scored 5, 1; g: a (0), b (1), c (2) scored 1, 2, 3. Spearman per list: e -0.866 (score ranks 1, 2.5,
    2.5 against 3, 2, 1), f 1, g -1; mean -0.289 with a bootstrap interval over the three lists.
    Table 7's pairs: e wrong, wrong, tie; f right; g wrong x3 -> agreement 1.5/7, without ties 1/6."""
    from mrtk.evals.judge_eval import list_numbers
    from mrtk.rows import answer_id

    lists = [
        {"example_id": "e", "replies": [("x", 0), ("y", 1), ("z", 2)]},
        {"example_id": "f", "replies": [("p", 0), ("q", 1)]},
        {"example_id": "g", "replies": [("a", 0), ("b", 1), ("c", 2)]},
    ]
    given = {"e": [3.0, 4.0, 4.0], "f": [5.0, 1.0], "g": [1.0, 2.0, 3.0]}
    scores = {answer_id(e, str(k)): s for e, ss in given.items() for k, s in enumerate(ss)}
    got = list_numbers(lists, scores)
    rho, lo, hi, n = got["spearman"]
    assert n == 3 and rho == pytest.approx((-(3**0.5) / 2 + 1 - 1) / 3) and lo <= rho <= hi and lo < hi
    assert got["list_agreement"][0] == pytest.approx(1.5 / 7) and got["list_agreement"][3] == 7
    assert got["list_agreement_without_ties"][0] == pytest.approx(1 / 6) and got["list_agreement_without_ties"][3] == 6
    assert got["list_tie_rate"][0] == pytest.approx(1 / 7)
    assert all(v[1] is not None and v[1] <= v[0] <= v[2] for v in got.values())
