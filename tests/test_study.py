"""`mrtk study`: one run per variant, skipped when finished, and the side-by-side table (issue 25)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY, mrtk
from scripted import ScriptedPolicy, scripted_train

from mrtk.present.study import even_battles, run_study
from mrtk.ui import QuietUI


def test_a_study_runs_each_variant_once_and_tabulates_them(tmp_path):
    (tmp_path / "tiny.yaml").write_text(
        yaml.safe_dump({**TINY, "probe": {"file": "probe_human.jsonl", "limit": 4, "n": 1, "frozen": 3}})
    )
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "base": "tiny.yaml",
                "set": {"iterations": 2},
                "variants": {"paper": {}, "cream": {"train.consistency": "avg"}},
            },
            sort_keys=False,
        )
    )
    out = tmp_path / "out"
    result = run_study(study, out, QuietUI(), open_policy=ScriptedPolicy().opener, train=scripted_train)
    rows = result["rows"]
    assert [(r["variant"], r["iteration"]) for r in rows] == [(v, i) for v in ("paper", "cream") for i in (1, 2)]
    by = {(r["variant"], r["iteration"]): r for r in rows}
    assert by[("cream", 2)]["label_smoothing"] is not None and by[("paper", 2)]["label_smoothing"] == 0.0
    assert all(
        r["probe_agreement"] and r["probe_agreement"][3] == 4 for r in rows
    )  # M1 and M2 judged the 4 probe pairs
    assert by[("paper", 2)]["drift_mean_shift"] is not None and by[("paper", 1)]["drift_mean_shift"][0] == 0.0
    assert all(0.0 <= r["first_position_share"] <= 1.0 and r["dpo_steps"] > 0 for r in rows)
    # M1 is every variant's seed model: the second variant took the first one's M1 probe rows as they were
    from conftest import rows as db_rows

    m1 = "SELECT item_id, raw_text, score, created_at FROM eval_items WHERE iteration = 0 ORDER BY 1"
    paper, cream = (db_rows(result["runs"][v] / "mrtk.duckdb", m1) for v in ("paper", "cream"))
    assert paper and cream == paper
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "study.json").read_text())
    assert saved["rows"][0]["variant"] == "paper" and (out / "study.md").read_text().count("\n") == 2 + len(rows)
    # again: every variant finished, nothing runs (a policy that would fail if asked)
    again = run_study(study, out, QuietUI(), open_policy=None, train=None)
    assert [(r["variant"], r["iteration"], r["first_position_share"]) for r in again["rows"]] == [
        (r["variant"], r["iteration"], r["first_position_share"]) for r in rows
    ]


def test_even_battles_hard_and_soft():
    def m(a, b, winner, p_a):
        return {"judgement_a": a, "judgement_b": b, "winner": winner, "p_a": p_a}

    rows = [m("x", "y", "x", 0.9), m("y", "x", "y", 0.9), m("x", "z", "x", 0.9), m("z", "x", "x", 0.2)]
    assert even_battles(rows, soft=False) == (0.5, 2)  # x-y: each order its first position; x-z: x both times
    assert even_battles(rows, soft=True) == (pytest.approx(0.5), 2)  # x-y: (0.9 + 0.1) / 2 = 0.5; x-z: 0.85


def test_a_bad_study_file_is_one_line(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("variants: []\n")
    res = mrtk("study", str(bad), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert res.returncode != 0 and "variants" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = mrtk("study", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_the_table_shows_the_smoothing_dpo_trained_with():
    """CREAM asked for 0.54 -> clamped to 0.5 -> applied 0.49 (robust's limit): the table says 0.490 (asked 0.500)."""
    from mrtk.present.study import cells

    row = {
        "variant": "c",
        "iteration": 2,
        "first_position_share": None,
        "ties": None,
        "probe_agreement": None,
        "drift_mean_shift": None,
        "actor_pairs": 1,
        "judge_pairs": 0,
        "dpo_steps": 1,
        "reward_margin": None,
        "label_smoothing": 0.49,
        "label_smoothing_asked": 0.5,
        "run_minutes": None,
    }
    assert "0.490 (asked 0.500)" in cells(row)


@pytest.mark.parametrize("name", ["study_cpu.yaml", "study_truth.yaml", "sweep_verifier.yaml"])
def test_the_shipped_studies_validate(name):
    """Every variant of a shipped study is a valid run config; the ground-truth ones run the paper's
    pair rules (no NeMo filters) and label their verifier arm by its rewards."""
    from mrtk.resources import asset_dir
    from mrtk.present.study import load_study, variant_configs

    path = asset_dir("experiments") / name
    configs = variant_configs(load_study(path), path.parent)
    for _, cfg in configs.values():
        if name != "sweep_verifier.yaml":
            assert not cfg.pairs.drop_same_score and cfg.pairs.judge_share_cap is None
    if name == "study_truth.yaml":
        assert {v: c.rewards for v, (_, c) in configs.items()} == {"self_judge": "self", "verifier": "verifier"}
