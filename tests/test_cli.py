"""The command line's error contract: one line naming the problem and the fix, exit code 2,
no traceback, nothing written. Each case runs the real `mrtk` in a subprocess."""

from __future__ import annotations

import pytest
import yaml

from conftest import TINY, mrtk

TEMPLATE_WITH_UNKNOWN_VAR = """---
name: my_judge
role: judge
variables: [question, response, rubric]
parser: score
---
{{question}} {{response}} {{rubric}}
"""


def write(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content) if isinstance(content, str) else p.write_bytes(content)
    return p


def cfg_with(tmp_path, **sections):
    raw = {**TINY, **sections}
    return write(tmp_path, "cfg.yaml", yaml.safe_dump(raw))


CASES = {
    "malformed yaml": (lambda t: ["run", str(write(t, "c.yaml", "actor: [k: 3\n"))], "not valid YAML"),
    "unknown key": (lambda t: ["run", str(cfg_with(t, actor={"kk": 2}))], "unknown key 'actor.kk'"),
    "k below 2": (lambda t: ["run", str(cfg_with(t, actor={"k": 1}))], "actor.k"),
    "rho out of range": (lambda t: ["run", "--set", "pairs.rho=[1.5]"], "pairs.rho"),
    "negative lr": (lambda t: ["run", "--set", "train.lr=-0.1"], "train.lr"),
    "unknown template variable": (
        lambda t: ["run", "--set", f"judge.template={write(t, 'my_judge.md', TEMPLATE_WITH_UNKNOWN_VAR)}"],
        "unknown variable 'rubric' for the judge stage"),
    "missing model directory": (lambda t: ["run", "--set", f"model={t / 'no_such_model'}"], "model directory"),
    "model dir without config": (lambda t: (t / "empty_model").mkdir() or ["run", "--set", f"model={t / 'empty_model'}"], "has no config.json"),
    "missing config file": (lambda t: ["run", "nope.yaml"], "config 'nope.yaml' not found"),
    "bad prompts file": (lambda t: ["run", "--set", f"prompts.file={write(t, 'p.jsonl', '{oops')}"], "line 1 is not valid JSON"),
    "resume missing run": (lambda t: ["run", "--resume", str(t / "nothing")], "not found"),
    "query without runs": (lambda t: ["query", "select 1"], "no runs under runs/"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_error(tmp_path, case):
    make_args, needle = CASES[case]
    res = mrtk(*make_args(tmp_path), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    # nothing was started: a refused run leaves no run directory behind
    assert not list(tmp_path.glob("runs/*/mrtk.duckdb"))


def test_invalid_and_write_sql(tmp_path):
    from mrtk.store import RunStore

    store = RunStore(tmp_path / "runs" / "r1")
    store.migrate()
    for sql, needle in [("selec * from judgements", "Parser Error"), ("select * from nope", "nope"),
                        ("drop table judgements", "read-only")]:
        res = mrtk("query", sql, cwd=tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], res.stderr
    assert mrtk("query", "select count(*) from judgements", cwd=tmp_path, check=True).returncode == 0
