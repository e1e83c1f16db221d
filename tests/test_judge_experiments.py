"""Judge experiments: `mrtk judge` re-judges stored responses, `mrtk compare` compares judge sets,
`mrtk prompts` shows and renders templates. Real model, real DuckDB, real CLI."""

from __future__ import annotations

import json

import duckdb
import pytest
from conftest import mrtk

from mrtk.present.compare import compare_sets
from mrtk.config import PairsCfg
from mrtk.store.db import DB_NAME


def count(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_rejudge_with_another_template_then_compare(run_copy):
    db = run_copy / DB_NAME
    loop_before = count(db, "SELECT judgement_id, score, raw_text FROM judgements ORDER BY 1")
    responses = count(db, "SELECT count(*) FROM responses")[0][0]
    res = mrtk("judge", "--run", str(run_copy), "--template", "judge_10point", "-q", cwd=run_copy.parent, check=True)
    assert f"responses unchanged: {responses} -> {responses}" in " ".join(res.stdout.split())
    # No actor call: the same responses; the loop's judgements untouched; one new judgement per loop judgement.
    assert count(db, "SELECT count(*) FROM responses")[0][0] == responses
    assert (
        count(db, "SELECT judgement_id, score, raw_text FROM judgements WHERE source = 'loop' ORDER BY 1")
        == loop_before
    )
    per_it = count(
        db,
        """SELECT iteration, count(*) FILTER (WHERE source = 'loop'), count(*) FILTER (WHERE template = 'judge_10point'),
                                 min(score) FILTER (WHERE template = 'judge_10point'), max(score) FILTER (WHERE template = 'judge_10point')
                          FROM judgements GROUP BY 1 ORDER BY 1""",
    )
    assert [(it, a == b) for it, a, b, _, _ in per_it] == [(1, True), (2, True)]
    assert all(1.0 <= lo <= hi <= 10.0 for *_, lo, hi in per_it)
    assert count(db, "SELECT count(DISTINCT model_version) FROM judgements WHERE template = 'judge_10point'")[0][0] == 2

    again = mrtk("judge", "--run", str(run_copy), "--template", "judge_10point", "-q", cwd=run_copy.parent, check=True)
    assert again.stdout.startswith("0 new rows")  # keyed by template hash: nothing judged twice

    table = mrtk(
        "compare", "judge_additive5:loop", "judge_10point", "--run", str(run_copy), cwd=run_copy.parent, check=True
    ).stdout
    for label in ("parse failures", "tie rate", "score-length", "actor pairs built", "agreement on"):
        assert label in table
    data = json.loads(
        mrtk(
            "compare",
            "judge_additive5:loop",
            "judge_10point",
            "--run",
            str(run_copy),
            "-f",
            "json",
            cwd=run_copy.parent,
            check=True,
        ).stdout
    )
    assert data["iterations"] == [1, 2] and [s["rows"] for s in data["sets"]] == [sum(r[1] for r in per_it)] * 2
    assert 0.0 <= data["agreement"] <= 1.0 and data["sets"][0]["parse_failure_rate"] == 0.0


def test_pairwise_template_judges_both_orders(run_copy):
    db = run_copy / DB_NAME
    mrtk(
        "judge",
        "--run",
        str(run_copy),
        "-t",
        "judge_pairwise",
        "-i",
        "1",
        "--n",
        "1",
        "-q",
        cwd=run_copy.parent,
        check=True,
    )
    expected = count(
        db,
        """SELECT sum(k * (k - 1)) FROM (SELECT count(*) AS k FROM responses
                            WHERE iteration = 1 AND NOT is_duplicate GROUP BY prompt_id)""",
    )[0][0]
    assert count(db, "SELECT count(*) FROM pairwise_judgements")[0][0] == expected
    # every unordered pair appears in both orders, and a parsed verdict names one of the two responses
    assert (
        count(
            db,
            """SELECT count(*) FROM pairwise_judgements p JOIN pairwise_judgements q
                        ON p.response_a = q.response_b AND p.response_b = q.response_a""",
        )[0][0]
        == expected
    )
    assert (
        count(
            db,
            """SELECT count(*) FROM pairwise_judgements
                        WHERE verdict IS NOT NULL AND winner NOT IN (response_a, response_b)""",
        )[0][0]
        == 0
    )
    out = mrtk(
        "query",
        "@position_bias",
        "-p",
        "iteration=1",
        "--run",
        str(run_copy),
        "-f",
        "csv",
        cwd=run_copy.parent,
        check=True,
    )
    assert ",pairwise,judge_pairwise," in out.stdout


BAD_TEMPLATES = {
    "front matter": ("---\nname: [unclosed\n---\nbody {{response}}\n", "front matter is not valid YAML"),
    "unknown variable": (
        "---\nname: x\nrole: judge\nvariables: [question, response]\nparser: score\n---\n{{question}} {{response}} {{rubric}}\n",
        "unknown variable {{rubric}}",
    ),
    "missing parser": (
        "---\nname: x\nrole: judge\nvariables: [question, response]\n---\n{{question}} {{response}}\n",
        "lacks 'parser'",
    ),
    "not a judge": (
        "---\nname: x\nrole: actor\nvariables: [prompt]\nparser: none\n---\n{{prompt}}\n",
        "needs a judge template",
    ),
    "pairwise without B": (
        "---\nname: x\nrole: judge\nvariables: [question, response_a]\nparser: verdict\n---\n{{question}} {{response_a}}\n",
        "needs {{response_b}}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TEMPLATES))
def test_malformed_template_rejected_before_anything_loads(case, tmp_path):
    """The template is checked before the run is even looked up: with a run that does not exist,
    the error is still the template's (one line, exit 2)."""
    text, message = BAD_TEMPLATES[case]
    path = tmp_path / "bad.md"
    path.write_text(text)
    res = mrtk("judge", "--run", str(tmp_path / "no-such-run"), "--template", str(path), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and message in res.stderr


def test_compare_sets_hand_computed():
    """Pointwise A (scores 1, 2, 3) against pairwise B on one prompt's three responses.
    B: r0 beats r1 in both orders; r2 beats r1 in both; r0-r2 split by position (a tie)."""
    responses = [
        {"response_id": f"r{i}", "prompt_id": "p", "iteration": 1, "n_chars": 10 * (i + 1), "is_duplicate": False}
        for i in range(3)
    ]
    a = {
        "kind": "pointwise",
        "rows": [{"response_id": f"r{i}", "score": float(i + 1), "parse_status": "ok"} for i in range(3)],
    }
    games = [
        ("r0", "r1", "r0"),
        ("r1", "r0", "r0"),
        ("r1", "r2", "r2"),
        ("r2", "r1", "r2"),
        ("r0", "r2", "r0"),
        ("r2", "r0", "r2"),
    ]
    b = {
        "kind": "pairwise",
        "rows": [
            {"response_a": x, "response_b": y, "winner": w, "verdict": "A" if w == x else "B", "parse_status": "ok"}
            for x, y, w in games
        ],
    }
    res = compare_sets(
        responses,
        a,
        b,
        pairs_cfg=PairsCfg(rho=[0.0], max_chosen_chars=[None]),
        run_seed=0,
        labels=("a", "b"),
        iterations=[1],
    )
    sa, sb = res["sets"]
    assert sa["tie_rate"] == 0.0 and sb["tie_rate"] == pytest.approx(1 / 3)
    assert res["compared_pairs"] == 2 and res["agreement"] == 0.5  # (r1, r2) agree, (r0, r1) disagree
    assert sb["first_position_share"] == pytest.approx(4 / 6) and sb["position_consistency"] == pytest.approx(2 / 3)
    # A: r2 over r0. B (win rates r0 .75, r1 0, r2 .75; tie broken by the shorter): r0 over r1, which A reverses.
    assert (sa["actor_pairs"], sb["actor_pairs"], res["same_actor_pairs"], res["flipped"]) == (1, 1, 0, [0, 1])
    assert sa["score_hist"] == {1: 1, 2: 1, 3: 1} and sb["score_hist"] is None
    # intervals: Wilson for 1 of 2 agreeing (centre 0.5, by hand: 0.5 -+ z sqrt(.25/2 + z^2/16) / (1 + z^2/2), z = 1.96)
    z = 1.96
    half = z * (0.25 / 2 + z**2 / 16) ** 0.5 / (1 + z**2 / 2)
    assert res["agreement_ci"] == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert res["flipped_share"] == [0.0, 1.0] and res["flipped_ci"][1][1] == pytest.approx(1.0)


def test_prompts_commands(tmp_path):
    listing = mrtk("prompts", "list", cwd=tmp_path, check=True)
    for name in ("judge_additive5", "judge_10point", "judge_pairwise", "meta_judge", "meta_judge_nemo"):
        assert name in listing.stdout
    shown = mrtk("prompts", "show", "judge_10point", cwd=tmp_path, check=True)
    assert shown.stdout.startswith("---\nname: judge_10point") and "hash" in shown.stderr
    # a meta-judge that shows the judge's rubric is also printed bound, as the loop sends it (the loop's hash)
    from mrtk.prompts import bind_meta_judge, load_template

    meta = mrtk("prompts", "show", "meta_judge", cwd=tmp_path, check=True).stdout
    raw, bound = meta.split("\n# --- as the loop sends it with judge template judge_additive5")
    additive = bind_meta_judge(
        load_template("meta_judge", role="meta-judge"), load_template("judge_additive5", role="judge")
    )
    assert (
        "{{rubric}}" in raw
        and "{{rubric}}" not in bound.split("\n", 1)[1]
        and additive.body in bound
        and f"hash {additive.hash}" in bound
    )
    ten = mrtk("prompts", "show", "meta_judge", "--judge", "judge_10point", cwd=tmp_path, check=True).stdout
    assert load_template("judge_10point").rubric.strip() in ten.split("# --- as the loop sends it")[1]
    assert "as the loop sends it" not in shown.stdout  # a judge template: the file only
    rendered = mrtk(
        "prompts",
        "render",
        "judge_10point",
        "--var",
        "question=Q?",
        "--var",
        "response={{question}} Score: 10",
        cwd=tmp_path,
        check=True,
    ).stdout
    assert (
        "User: Q?" in rendered and "<response>{{question}} Score: 10</response>" in rendered
    )  # inserted verbatim, once
    missing = mrtk("prompts", "render", "judge_10point", "--var", "question=Q?", cwd=tmp_path)
    assert missing.returncode == 2 and "missing variable 'response'" in missing.stderr
    diff = mrtk("prompts", "diff", "meta_judge", "meta_judge_nemo", cwd=tmp_path, check=True).stdout
    assert "+show_scores: false" in diff and diff.startswith("--- meta_judge (")
    own = tmp_path / "mine"
    own.mkdir()
    (own / "judge_short.md").write_text(
        "---\nname: judge_short\nrole: judge\nvariables: [question, response]\nparser: score\n"
        "sampling: {max_new_tokens: 16}\n---\nQ: {{question}}\nA: {{response}}\nScore 0-5.\n"
    )
    assert "judge_short" in mrtk("prompts", "list", "--prompts", str(own), cwd=tmp_path, check=True).stdout


def test_nemo_meta_judge_template_hides_scores(model_dir):
    """The NeMo variant's front matter (`show_scores: false`) hides the judgements' score lines even
    when the config shows them; the row records what the meta-judge saw."""
    from mrtk.backends.embedded import EmbeddedBackend
    from mrtk.config import validate_config
    from mrtk.models import load_model
    from mrtk.prompts import bind_meta_judge, load_template
    from mrtk.stages.meta_judge import run_meta_judge

    class Recording(EmbeddedBackend):  # the real backend; it only remembers the prompts it was given
        def generate(self, requests, params, **kw):
            self.seen = [r.prompt for r in requests]
            return super().generate(requests, params, **kw)

    backend = Recording(*load_model(model_dir))
    cfg = validate_config({"meta_judge": {"max_new_tokens": 2, "show_scores": True}}).meta_judge
    ja = {"judgement_id": "a", "prompt_id": "p", "response_id": "r", "text": "Relevant and complete.\nScore: 4"}
    jb = {"judgement_id": "b", "prompt_id": "p", "response_id": "r", "text": "Off topic.\nScore: 1"}
    for name, shows in (("meta_judge", True), ("meta_judge_nemo", False)):
        template = bind_meta_judge(
            load_template(name, role="meta-judge"), load_template("judge_additive5", role="judge")
        )
        [row] = run_meta_judge(
            backend, [(ja, jb)], {"p": "Q?"}, {"r": "R."}, cfg, template, iteration=1, run_seed=0, model_version="M1"
        )
        assert row["show_scores"] is shows
        assert ("Score: 4" in backend.seen[0]) is shows and "Relevant and complete." in backend.seen[0]


@pytest.mark.parametrize("template_name", ["judge_additive5", "judge_pairwise"])
@pytest.mark.parametrize("source", ["loop", "rejudge", "eval", "drift"])
def test_the_ids_a_judging_job_expects_are_the_ids_it_writes(template_name, source):
    """issue 35: the judging key is computed in one place (`judging_key`), so `Judging.missing` finds
    exactly what `Judging.run` wrote, for every source and both template kinds, labelled with any
    model version; before, a pairwise template with source 'loop' expected the template hash and
    wrote a re-judgement key, so every resume judged it again."""
    from scripted import ScriptedPolicy

    from mrtk.config import JudgeCfg
    from mrtk.prompts import load_template
    from mrtk.stages.judge import Judging

    role = "pairwise-judge" if template_name == "judge_pairwise" else "judge"
    job = Judging(load_template(template_name, role=role), JudgeCfg(n=2), source=source, model_version="M2")
    responses = [
        {"response_id": f"it1/p{p}/r{k}", "prompt_id": f"p{p}", "text": f"answer {p}.{k}", "is_duplicate": False}
        for p in range(2)
        for k in range(2)
    ]
    units = job.units(responses)
    written = job.run(ScriptedPolicy().use("M2"), units, {"p0": "q0", "p1": "q1"}, iteration=1, run_seed=0)
    assert {r["judgement_id"] for r in written} == {i for u in units for i in job.ids(u)}
    assert job.missing(responses, {r["judgement_id"] for r in written}) == []
    again = job.run(
        ScriptedPolicy().use("M2"), units, {"p0": "q0", "p1": "q1"}, iteration=1, run_seed=0, model_version="M3"
    )
    assert {r["judgement_id"] for r in again} == {r["judgement_id"] for r in written}  # the label is not the key
