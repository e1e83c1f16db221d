"""The command line's error contract: one line naming the problem and the fix, exit code 2,
no traceback, nothing written. Each case runs the real `mrtk` in a subprocess."""

from __future__ import annotations

import pytest
import yaml

from conftest import TINY, mrtk

TEMPLATE_WITH_UNKNOWN_VAR = """---
name: my_judge
role: judge
variables: [question, response, context]
parser: score
---
{{question}} {{response}} {{context}}
"""


def write(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content) if isinstance(content, str) else p.write_bytes(content)
    return p


def cfg_with(tmp_path, **sections):
    raw = {**TINY, **sections}
    return write(tmp_path, "cfg.yaml", yaml.safe_dump(raw))


def make_run(t, iterations_with_responses=(1,)):
    """A run database with a stored config and a few responses (no models): enough for the
    commands that read or extend a run."""
    from mrtk.config import validate_config
    from mrtk.runs import new_run

    cfg_path = cfg_with(t)
    store = new_run(validate_config(dict(TINY)), str(cfg_path), t / "runs")
    store.write(
        "responses",
        [
            {
                "response_id": f"it{i}/p/r{k}",
                "iteration": i,
                "prompt_id": "p",
                "text": "hi",
                "n_chars": 2,
                "is_duplicate": False,
            }
            for i in iterations_with_responses
            for k in range(2)
        ],
    )
    return store.run_dir


def newer_schema(t):
    from mrtk.store import RunStore

    run = make_run(t)
    with RunStore(run).tx() as con:
        con.execute("INSERT INTO schema_migrations (name) VALUES ('m999_from_the_future')").fetchall()
    return run


def locked(t):
    """A run whose writer lock another process (this test) holds."""
    import fcntl

    run = make_run(t)
    fh = open(run / ".lock", "a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write("4242")
    fh.flush()
    HELD.append(fh)
    return run


def with_prompts(t, content):
    return ["run", "--set", f"prompts.file={write(t, 'p.jsonl', content)}"]


HELD: list = []
LONG_PROMPT = '{"prompt": "' + "word " * 900 + '"}\n'

CASES = {
    # config
    "malformed yaml": (lambda t: ["run", str(write(t, "c.yaml", "actor: [k: 3\n"))], "not valid YAML"),
    "config top level not a mapping": (
        lambda t: ["run", str(write(t, "c.yaml", "- a\n- b\n"))],
        "top level must be a mapping",
    ),
    "config not utf-8": (lambda t: ["run", str(write(t, "c.yaml", b"name: caf\xe9\n"))], "not UTF-8"),
    "missing config file": (lambda t: ["run", "nope.yaml"], "config 'nope.yaml' not found"),
    "unknown key": (lambda t: ["run", str(cfg_with(t, actor={"kk": 2}))], "unknown key 'actor.kk'"),
    "k below 2": (lambda t: ["run", str(cfg_with(t, actor={"k": 1}))], "actor.k"),
    "n below 2": (lambda t: ["run", "--set", "judge.n=1"], "judge.n"),
    "rho out of range": (lambda t: ["run", "--set", "pairs.rho=[1.5]"], "pairs.rho"),
    "negative lr": (lambda t: ["run", "--set", "train.lr=-0.1"], "train.lr"),
    "judge iteration beyond the run": (
        lambda t: ["run", "--set", "pairs.judge_iterations=[5]"],
        "pairs.judge_iterations",
    ),
    "--set without =": (lambda t: ["run", "--set", "judge.n"], "expected key=value"),
    # templates
    "unknown template variable": (
        lambda t: ["run", "--set", f"judge.template={write(t, 'my_judge.md', TEMPLATE_WITH_UNKNOWN_VAR)}"],
        "unknown variable 'context' for the judge stage",
    ),
    "unknown template name": (lambda t: ["run", "--set", "judge.template=nope"], "template 'nope' not found"),
    "pairwise template in the loop": (
        lambda t: ["run", "--set", "judge.template=judge_pairwise"],
        "is a pairwise judge",
    ),
    "template without front matter": (
        lambda t: ["run", "--set", f"judge.template={write(t, 'j.md', 'Rate {{response}}')}"],
        "no front matter",
    ),
    "template dir missing": (lambda t: ["run", "--set", "prompts.template_dirs=[nowhere]"], "is not a directory"),
    # model
    "missing model directory": (lambda t: ["run", "--set", f"model={t / 'no_such_model'}"], "model directory"),
    "model dir without config": (
        lambda t: (t / "empty_model").mkdir() or ["run", "--set", f"model={t / 'empty_model'}"],
        "has no config.json",
    ),
    "corrupt model config": (
        lambda t: (t / "m").mkdir() or write(t, "m/config.json", "{not json") and ["run", "--set", f"model={t / 'm'}"],
        "config.json is not valid JSON",
    ),
    # prompts file
    "prompts invalid json": (lambda t: with_prompts(t, "{oops"), "line 1 is not valid JSON"),
    "prompts empty prompt": (
        lambda t: with_prompts(t, '{"prompt": "a"}\n{"prompt": "  "}'),
        "line 2 has an empty prompt",
    ),
    "prompts duplicate": (
        lambda t: with_prompts(t, '{"prompt": "a"}\n{"prompt": "a"}'),
        "line 2 repeats the prompt of line 1",
    ),
    "prompts not utf-8": (lambda t: with_prompts(t, b'{"prompt": "a"}\n{"prompt": "caf\xe9"}'), "line 2 is not UTF-8"),
    "prompts file missing": (
        lambda t: ["run", "--set", "prompts.file=nothing.jsonl"],
        "prompts.file 'nothing.jsonl' not found",
    ),
    "prompt longer than allowed": (lambda t: with_prompts(t, LONG_PROMPT), "over prompts.max_prompt_tokens=512"),
    "prompts beyond the model context": (
        lambda t: ["run", "--set", "prompts.max_prompt_tokens=8000"],
        "over the model's context of 8192",
    ),
    # runs and resume
    "resume missing run": (lambda t: ["run", "--resume", str(t / "nothing")], "not found"),
    "resume with a config": (
        lambda t: ["run", str(cfg_with(t)), "--resume", str(make_run(t))],
        "--resume continues a run with its stored config",
    ),
    "resume a run another process writes": (
        lambda t: ["run", "--resume", str(locked(t))],
        "being written by another process (pid 4242)",
    ),
    "database from a newer mrtk": (lambda t: ["run", "--resume", str(newer_schema(t))], "newer than this mrtk knows"),
    # query
    "query without runs": (lambda t: ["query", "select 1"], "no runs under runs/"),
    "query missing run": (lambda t: ["query", "select 1", "--run", str(t / "nothing")], "not found"),
    "query invalid sql": (lambda t: make_run(t) and ["query", "selec * from judgements"], "Parser Error"),
    "query unknown table": (lambda t: make_run(t) and ["query", "select * from nope"], "nope"),
    "query write statement": (lambda t: make_run(t) and ["query", "drop table judgements"], "read-only"),
    "query unknown saved query": (lambda t: make_run(t) and ["query", "@nope"], "no saved query @nope"),
    "query bad format": (lambda t: make_run(t) and ["query", "select 1", "--format", "xml"], "--format 'xml'"),
    "query negative limit": (lambda t: make_run(t) and ["query", "select 1", "--limit", "-1"], "--limit -1"),
    "runs in a missing folder": (lambda t: ["runs", "--root", str(t / "nowhere")], "is not a folder"),
    "bench unknown workload": (lambda t: ["bench", "--only", "nope"], "--only 'nope' matches no workload"),
    # judge experiments and reports
    "judge iteration without responses": (
        lambda t: ["judge", "--run", str(make_run(t)), "-t", "judge_10point", "-i", "5"],
        "has no responses for iteration 5",
    ),
    "judge with zero judgements": (
        lambda t: ["judge", "--run", str(make_run(t)), "-t", "judge_10point", "--n", "0"],
        "at least 1",
    ),
    "judge bad score mode": (
        lambda t: ["judge", "--run", str(make_run(t)), "-t", "judge_10point", "--score-mode", "vibes"],
        "--score-mode 'vibes'",
    ),
    "judge with an actor template": (
        lambda t: ["judge", "--run", str(make_run(t)), "-t", "actor"],
        "needs a judge template",
    ),
    "compare unknown judge set": (
        lambda t: ["compare", "a", "b", "--run", str(make_run(t))],
        "no judge set matches 'a'",
    ),
    "report bad format": (lambda t: ["report", str(make_run(t)), "--format", "pdf"], "--format 'pdf'"),
    "report to a missing folder": (
        lambda t: ["report", str(make_run(t)), "--out", str(t / "no/such/dir/r.html")],
        "does not exist; create it first",
    ),
    "report to a folder": (lambda t: ["report", str(make_run(t)), "--out", str(t)], "is a folder; give a file path"),
    "judge a run without responses": (
        lambda t: ["judge", "--run", str(make_run(t, ())), "-t", "judge_10point"],
        "has no responses yet",
    ),
    "run into a folder that is a file": (
        lambda t: ["run", "--out", str(write(t, "taken", "x"))],
        "cannot create the folder",
    ),
    # evals: numbers refused before any network or model work
    "eval data not utf-8": (
        lambda t: [
            "eval",
            "judge",
            str(write(t, "h.jsonl", b'{"input": "caf\xe9", "output_1": "a", "output_2": "b", "label": 1}\n')),
        ],
        "line 1 is not UTF-8",
    ),
    "eval negative budget": (
        lambda t: ["eval", "alpaca", "--max-cost", "-1"],
        "--max-cost -1: give a budget of 0 USD or more",
    ),
    "eval zero answer tokens": (
        lambda t: ["eval", "arena-hard", "--questions", "q.jsonl", "--baseline", "b.jsonl", "--max-new-tokens", "0"],
        "--max-new-tokens 0",
    ),
    "bench unknown setting": (
        lambda t: ["bench", "--only", "duckdb", "--set", "train.nope=1"],
        "unknown key 'train.nope'",
    ),
    # URLs, files and numbers of the newer options: refused before a model loads or a call is made
    "sglang url without a scheme": (
        lambda t: ["run", "--set", "backend=sglang", "--set", "sglang.url=localhost:30000"],
        "sglang.url: URL 'localhost:30000' is not a URL (no http:// or https:// scheme)",
    ),
    "sglang url with a bad port": (
        lambda t: ["run", "--set", "backend=sglang", "--set", "sglang.urls=[http://127.0.0.1:99999]"],
        "sglang.urls: URL 'http://127.0.0.1:99999' is not a URL",
    ),
    "sglang worker url without a host": (
        lambda t: [
            "run",
            "--set",
            "backend=sglang",
            "--set",
            "sglang.url=http://127.0.0.1:30000",
            "--set",
            "sglang.worker_urls=[http://]",
        ],
        "sglang.worker_urls: URL 'http://' is not a URL (no host)",
    ),
    "smg gateway with worker urls": (
        lambda t: [
            "run",
            "--set",
            "backend=sglang",
            "--set",
            "sglang.url=http://127.0.0.1:30000",
            "--set",
            "sglang.smg=true",
            "--set",
            "sglang.worker_urls=[http://127.0.0.1:30001]",
        ],
        "sglang.smg: true needs exactly one gateway URL",
    ),
    "bench unknown serving-like workload": (lambda t: ["bench", "--only", "serve2"], "matches no workload"),
    "resume a run with a bad sglang url": (
        lambda t: ["run", "--resume", str(bad_url_run(t))],
        "sglang.urls: URL 'localhost:1' is not a URL",
    ),
    "eval api base not a URL": (
        lambda t: ["eval", "alpaca", "--api-base", "localhost:8000", "--run", str(make_run(t))],
        "--api-base 'localhost:8000' is not a URL",
    ),
    "audit api base not a URL": (
        lambda t: ["eval", "audit", "--api-base", "ftp://x", "--run", str(make_run(t))],
        "--api-base 'ftp://x' is not a URL (no http:// or https:// scheme)",
    ),
    "eval difficulty file missing": (
        lambda t: ["eval", "alpaca", "--difficulty", str(t / "df_gamed.csv"), "--run", str(make_run(t))],
        "no such file; give AlpacaEval's df_gamed.csv",
    ),
    "eval difficulty file malformed": (
        lambda t: ["eval", "alpaca", "--difficulty", str(write(t, "d.csv", "a,b\n1,2\n")), "--run", str(make_run(t))],
        "no column 'model'",
    ),
    "eval difficulty file not utf-8": (
        lambda t: [
            "eval",
            "alpaca",
            "--difficulty",
            str(write(t, "d.csv", b"mod\xe9l,index\n")),
            "--run",
            str(make_run(t)),
        ],
        "not a readable UTF-8 CSV",
    ),
    "eval judge zero judgements": (
        lambda t: ["eval", "judge", str(write(t, "h.jsonl", HUMAN_PAIR)), "--n", "0", "--run", str(make_run(t))],
        "--n 0: give at least 1",
    ),
    "eval judge zero limit": (
        lambda t: ["eval", "judge", str(write(t, "h.jsonl", HUMAN_PAIR)), "--limit", "0", "--run", str(make_run(t))],
        "--limit 0: give at least 1",
    ),
    "arena questions without uid": (
        lambda t: [
            "eval",
            "arena-hard",
            "--questions",
            str(write(t, "q.jsonl", '{"prompt": "Hi"}\n')),
            "--baseline",
            str(write(t, "b.jsonl", ARENA_ANSWER)),
            "--run",
            str(make_run(t)),
        ],
        "--questions",
    ),
    "arena baseline without an answer": (
        lambda t: [
            "eval",
            "arena-hard",
            "--questions",
            str(write(t, "q.jsonl", '{"uid": "u0", "prompt": "Hi"}\n')),
            "--baseline",
            str(write(t, "b.jsonl", '{"uid": "u0"}\n')),
            "--run",
            str(make_run(t)),
        ],
        "--baseline",
    ),
    "arena judge config without system prompt": (
        lambda t: [
            "eval",
            "arena-hard",
            "--questions",
            "q.jsonl",
            "--baseline",
            "b.jsonl",
            "--judge-config",
            str(write(t, "j.yaml", 'prompt_template: "{QUESTION} {ANSWER_A} {ANSWER_B}"\n')),
            "--run",
            str(make_run(t)),
        ],
        "no system_prompt",
    ),
}
HUMAN_PAIR = '{"input": "Q?", "output_1": "a", "output_2": "b", "label": 1}\n'
ARENA_ANSWER = '{"uid": "u0", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": {"answer": "Hello"}}]}\n'


def bad_url_run(t):
    """A run whose stored config holds a malformed sglang.url, as one written before URLs were checked."""
    from mrtk.store import RunStore

    run = make_run(t)
    with RunStore(run).tx() as con:
        con.execute(
            "UPDATE runs SET config = json_merge_patch(config, ?)",
            ['{"backend": "sglang", "sglang": {"url": "localhost:1", "urls": ["localhost:1"]}}'],
        ).fetchall()
    return run


def state(t):
    """Everything recorded under t: each run database's rows, table by table."""
    from mrtk.store.db import dict_rows, open_readonly

    out = {}
    for db in sorted(t.glob("runs/*/mrtk.duckdb")):
        con = open_readonly(db)
        try:
            for (table,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
                out[(db.parent.name, table)] = sorted(map(str, dict_rows(con.execute(f'SELECT * FROM "{table}"'))))
        finally:
            con.close()
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_error(tmp_path, case):
    make_args, needle = CASES[case]
    args = make_args(tmp_path)
    before = state(tmp_path)
    try:
        res = mrtk(*args, cwd=tmp_path)
    finally:
        while HELD:
            HELD.pop().close()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    # nothing recorded was lost or changed, and a refused command started no run
    assert state(tmp_path) == before


def test_a_bad_input_on_a_new_machine_is_one_line(tmp_path, monkeypatch):
    """With an empty model cache the first command converts the GGUF (transformers draws 48 lines
    of tqdm bar for it on stderr): the conversion still happens, and the error is the only line."""
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("MRTK_CACHE", str(cache))
    res = mrtk(*with_prompts(tmp_path, LONG_PROMPT), cwd=tmp_path)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert "over prompts.max_prompt_tokens=512" in lines[0]
    assert list(cache.glob("models/*/model.safetensors"))  # it did convert, silently


def test_the_table_is_big_enough():
    assert len(CASES) >= 30


def test_invalid_and_write_sql(tmp_path):
    from mrtk.store import RunStore

    store = RunStore(tmp_path / "runs" / "r1")
    store.migrate()
    for sql, needle in [
        ("selec * from judgements", "Parser Error"),
        ("select * from nope", "nope"),
        ("drop table judgements", "read-only"),
    ]:
        res = mrtk("query", sql, cwd=tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], res.stderr
    assert mrtk("query", "select count(*) from judgements", cwd=tmp_path, check=True).returncode == 0


def test_bench_json_for_one_workload(tmp_path):
    """`mrtk bench --only duckdb` runs that workload alone (no model is loaded for it) and
    `--json` carries its figures and the settings it ran with; no figure is asserted."""
    import json

    res = mrtk("bench", "--quick", "--only", "duckdb", "--json", "--set", "judge.n=2", cwd=tmp_path, check=True)
    report = json.loads(res.stdout)
    m = report[
        "machine"
    ]  # bf16 is measured only where generation uses it (emulated bf16 on an AVX2-only CPU takes minutes)
    assert (
        m["overrides"] == ["judge.n=2"]
        and m["matmul_gflops_fp32"] > 0
        and (m["inference_dtype"] != "bfloat16" or m["matmul_gflops_bf16"] > 0)
    )
    [row] = report["results"]
    assert row["workload"] == "duckdb_ingest" and row["rows"] == 100_000
    assert row["ingest_seconds"] > 0 and row["group_by_seconds"] > 0 and row["baseline"] > 0
