"""The `mrtk` command. The one place that turns MrtkError into a red line and an exit code."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import warnings  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Column, Table  # noqa: E402

from mrtk.errors import MrtkError  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mrtk: the Meta-Rewarding toolkit. Run self-improving actor/judge/meta-judge loops and query every call.",
)
err = Console(stderr=True)
out = Console()
PromptDirs = typer.Option(
    [], "--prompts", help="Your own template directory, searched before the shipped prompts/ (repeatable)."
)


def main() -> None:
    # Library deprecation notices are for mrtk's developers, not for people running experiments.
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        app()
    except MrtkError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="Experiment YAML (a path, or a shipped name: default, paper)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key, e.g. --set judge.n=5 (repeatable)."),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Parent directory of run directories."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume this run (directory or id under ./runs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Validate and resolve the config, print the plan, the launch commands and the disk "
        "estimate; load no model, write nothing.",
    ),
    dirs: List[Path] = PromptDirs,
) -> None:
    """Run the Meta-Rewarding loop (or resume one) and log every model call in DuckDB."""
    from mrtk.config import load_config, resolve_config_path
    from mrtk.inputs import pool_warning
    from mrtk.loop import run_locked
    from mrtk.runs import find_run, new_run, open_run
    from mrtk.ui import QuietUI, RichUI

    ui = QuietUI() if quiet else RichUI(err)
    signal.signal(signal.SIGTERM, _terminate)  # a polite kill stops a launched SGLang server too
    if resume:
        if dry_run:
            raise MrtkError("--dry-run plans a new run; drop --resume (or --dry-run)")
        if config or set_ or dirs:
            raise MrtkError("--resume continues a run with its stored config; drop CONFIG, --set and --prompts")
        run_dir = find_run(resume)
        store, cfg, config_dir = open_run(run_dir)
        inputs = _checked(ui, cfg, config_dir, True)
    else:
        path = resolve_config_path(config)
        cfg = load_config(path, set_)
        cfg.prompts.template_dirs = cfg.prompts.template_dirs + [
            str(d.resolve()) for d in dirs
        ]  # --prompts: part of building it
        if not dry_run:
            _output_dir(out_dir, "--out")
        inputs = _checked(ui, cfg, path.parent, not dry_run)
        if dry_run:
            from mrtk.plan import plan_lines

            for line in plan_lines(inputs):
                out.print(line, highlight=False, soft_wrap=True)
            return
        store = new_run(inputs.cfg, str(path.resolve()), out_dir)  # the effective config is what the run stores
    if warning := pool_warning(inputs.cfg, inputs.pool):
        err.print(f"[yellow]warning[/yellow]: {warning}", highlight=False, soft_wrap=True)
    run_locked(store, inputs, ui, say=f"run [bold]{store.run_dir}[/bold]")
    ui.info(
        f'[green]done[/green]: {store.run_dir}  (inspect with: mrtk query "select * from pairs" --run {store.run_dir})'
    )


def _checked(ui, cfg, config_dir: Path, load_tokenizer: bool):
    """check_inputs, with the embedded model's one-time conversion shown where progress goes: a
    spinner on a terminal while it runs, one line in a log once the inputs passed, so a bad input
    on a new machine is still one line."""
    import time

    from mrtk.inputs import check_inputs
    from mrtk.models import EMBEDDED, cache_dir, embedded_converted

    converting = load_tokenizer and cfg.model == EMBEDDED and not embedded_converted()
    if not converting:
        return check_inputs(cfg, config_dir, load_tokenizer=load_tokenizer)
    t0 = time.monotonic()
    with ui.waiting("converting the embedded model (once per machine)"):
        inputs = check_inputs(cfg, config_dir, load_tokenizer=load_tokenizer)
    ui.info(f"converted the embedded model once, into {cache_dir() / 'models'} ({time.monotonic() - t0:.0f}s)")
    return inputs


@app.command()
def query(
    sql: Optional[str] = typer.Argument(
        None, help="SQL to run, - to read it from stdin, or @name for a saved query (see --list)."
    ),
    run_: Optional[str] = typer.Option(None, "--run", help="Run directory or id (default: the latest under ./runs)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    param: List[str] = typer.Option([], "--param", "-p", help="Named parameter for $name in the SQL: -p name=value."),
    limit: int = typer.Option(200, "--limit", help="Most rows shown as a table (csv/json print all)."),
    list_: bool = typer.Option(False, "--list", help="List the saved queries (@name) and their parameters."),
) -> None:
    """Read-only SQL over a run's DuckDB (tables: runs, prompts, responses, judgements, pairwise_judgements,
    meta_judgements, elo, pairs, train_metrics, lineage), or a saved analysis query: mrtk query @position_bias -p iteration=2."""
    from mrtk.runs import find_run
    from mrtk.store.db import DB_NAME
    from mrtk.store.query import as_csv, as_json, run_query
    from mrtk.store.saved import resolve_saved, saved_queries

    if list_:
        table = Table("query", "what it shows", "parameters (-p name=value)")
        for q in saved_queries().values():
            table.add_row(f"@{q.name}", q.description, "\n".join(f"{k}: {v}" for k, v in q.params.items()))
        out.print(table)
        return
    if sql is None:
        raise MrtkError("query: give SQL, - (stdin) or @name; list saved queries with: mrtk query --list")
    if fmt not in ("table", "csv", "json"):
        raise MrtkError(f"--format {fmt!r} is not one of table, csv, json")
    if limit < 0:
        raise MrtkError(f"--limit {limit}: give 0 or more rows")
    if sql == "-":
        sql = sys.stdin.read()
    params = _pairs(param, "--param")
    if sql.startswith("@"):
        sql, params = resolve_saved(sql[1:], params)
    cols, rows = run_query(find_run(run_) / DB_NAME, sql, params)
    if fmt == "csv":
        sys.stdout.write(as_csv(cols, rows))
    elif fmt == "json":
        sys.stdout.write(as_json(cols, rows) + "\n")
    else:
        table = Table(*cols)
        for r in rows[:limit]:
            table.add_row(*["NULL" if v is None else str(v) for v in r])
        out.print(table)
        if len(rows) > limit:
            out.print(f"({len(rows) - limit} more rows; raise --limit or use --format csv)")


@app.command()
def runs(root: Path = typer.Option(Path("runs"), "--root", help="Directory holding run directories.")) -> None:
    """List runs with status, iterations done and headline numbers."""
    from mrtk.runs import list_runs

    if not root.is_dir():
        raise MrtkError(f"--root {root} is not a folder; give the folder holding run directories (default: runs)")
    table = Table("run", "status", "iterations", "judgements", "unparsed", "pairs kept", "last DPO loss")
    for r in list_runs(root):
        table.add_row(*[str(r[k]) for k in ("run", "status", "iterations", "judgements", "unparsed", "pairs", "loss")])
    out.print(table)


@app.command()
def report(
    run_: Optional[str] = typer.Argument(
        None, metavar="RUN", help="Run directory or id (default: the latest under ./runs)."
    ),
    out_path: Optional[Path] = typer.Option(
        None, "--out", help="HTML file (default RUN/report.html), or the PNG folder with --format png."
    ),
    fmt: str = typer.Option("html", "--format", "-f", help="html | png"),
) -> None:
    """Charts of a run per iteration: scores, lengths, pairs, DPO, meta-judge biases, Elo, evals."""
    from mrtk.present.report import render_html, write_pngs
    from mrtk.runs import find_run

    run_dir = find_run(run_)
    if fmt not in ("html", "png"):
        raise MrtkError(f"--format {fmt!r} is not one of html, png")
    if fmt == "png":
        folder = _output_dir(out_path or run_dir / "report", "--out")
        written = write_pngs(run_dir, folder)
        out.print(f"wrote {len(written)} charts to {folder}")
    else:
        target = _output_file(out_path or run_dir / "report.html", "--out")
        html = render_html(run_dir)
        try:
            target.write_text(html, encoding="utf-8")
        except OSError as e:
            raise MrtkError(f"--out {target}: cannot write it ({e.strerror}); pick a writable path") from None
        out.print(f"wrote {target}")


def _terminate(signum, frame):
    raise KeyboardInterrupt


def _output_file(path: Path, flag: str) -> Path:
    """An output file whose folder exists and is not a file, checked before any work is done."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise MrtkError(f"{flag} {path} is a folder; give a file path, e.g. {path / 'report.html'}")
    if not folder.is_dir():
        raise MrtkError(f"{flag} {path}: folder {folder} does not exist; create it first or pick another path")
    if not os.access(folder, os.W_OK):
        raise MrtkError(f"{flag} {path}: folder {folder} is not writable; pick another path")
    return path


def _output_dir(path: Path, flag: str) -> Path:
    """An output folder, created (with its parents) before any work is done."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MrtkError(f"{flag} {path}: cannot create the folder ({e.strerror}); pick a writable path") from None
    if not os.access(path, os.W_OK):
        raise MrtkError(f"{flag} {path} is not writable; pick another path")
    return path


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    """`name=value` options -> dict."""
    values = {}
    for item in items:
        if "=" not in item:
            raise MrtkError(f"{flag} {item!r}: expected name=value")
        k, v = item.split("=", 1)
        values[k.strip()] = v
    return values


prompts_app = typer.Typer(no_args_is_help=True, help="Prompt templates: list, show, render, diff.")
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("list")
def prompts_list(dirs: List[Path] = PromptDirs) -> None:
    """Every template found, with role, parser, score range, variables and hash."""
    from mrtk.prompts import discover

    table = Table("stage", "parser", "range", "variables", "hash", "from")
    table.columns.insert(0, Column("name", no_wrap=True))
    for name, t, where in discover(dirs):
        if isinstance(t, MrtkError):
            table.add_row(name, "[red]invalid[/red]", "", "", str(t), "", where)
            continue
        rng = f"{t.score_range[0]:g}-{t.score_range[1]:g}" if t.parser == "score" else ""
        table.add_row(name, t.stage, t.parser, rng, ", ".join(t.variables), t.hash, where)
    out.print(table)


@prompts_app.command("show")
def prompts_show(
    name: str = typer.Argument(..., help="Template name or .md path."),
    judge: Optional[str] = typer.Option(
        None,
        "--judge",
        help="For a meta-judge with {{rubric}}: the judge template whose rubric fills it "
        "(default: the default experiment's judge.template).",
    ),
    dirs: List[Path] = PromptDirs,
) -> None:
    """Print a template file (front matter and body) and its hash; a meta-judge that shows the judge's
    rubric is also printed as the loop sends it, bound to that rubric."""
    from mrtk.config import load_config
    from mrtk.prompts import bind_meta_judge, find_template, load_template

    t = load_template(name, dirs)
    sys.stdout.write(find_template(name, dirs).read_text(encoding="utf-8"))
    err.print(f"# {t.name}: stage {t.stage}, parser {t.parser}, hash {t.hash}", highlight=False)
    if t.stage == "meta-judge" and "rubric" in t.variables:
        judge_name = judge or load_config("default").judge.template
        bound = bind_meta_judge(t, load_template(judge_name, dirs, role="judge"))
        sys.stdout.write(
            f"\n# --- as the loop sends it with judge template {judge_name} ({{{{rubric}}}} filled; hash {bound.hash}; "
            "another judge: --judge NAME) ---\n" + bound.body + ("" if bound.body.endswith("\n") else "\n")
        )


@prompts_app.command("render")
def prompts_render(
    name: str = typer.Argument(..., help="Template name or .md path."),
    var: List[str] = typer.Option(
        [], "--var", help="A variable: --var question='What is 2+2?' (or name=@file to read a file)."
    ),
    dirs: List[Path] = PromptDirs,
) -> None:
    """Render a template with the given variables exactly as a stage would (strict: all of them, no others)."""
    from mrtk.prompts import load_template

    values = {}
    for k, v in _pairs(var, "--var").items():
        if v.startswith("@"):
            try:
                v = Path(v[1:]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise MrtkError(
                    f"--var {k}: cannot read {v[1:]} ({type(e).__name__}); give a readable UTF-8 file"
                ) from None
        values[k] = v
    sys.stdout.write(load_template(name, dirs).render(**values))


@prompts_app.command("diff")
def prompts_diff(
    a: str = typer.Argument(..., help="Template A"),
    b: str = typer.Argument(..., help="Template B"),
    dirs: List[Path] = PromptDirs,
) -> None:
    """Unified diff of two templates (front matter and body)."""
    import difflib

    from mrtk.prompts import find_template, load_template

    ta, tb = load_template(a, dirs), load_template(b, dirs)
    pa, pb = find_template(a, dirs), find_template(b, dirs)
    lines = difflib.unified_diff(
        pa.read_text(encoding="utf-8").splitlines(keepends=True),
        pb.read_text(encoding="utf-8").splitlines(keepends=True),
        fromfile=f"{ta.name} ({ta.hash})",
        tofile=f"{tb.name} ({tb.hash})",
    )
    sys.stdout.writelines(lines)


@app.command()
def judge(
    run_: Optional[str] = typer.Option(None, "--run", help="Run directory or id (default: the latest under ./runs)."),
    template: str = typer.Option(
        ..., "--template", "-t", help="Judge template (name or .md path): pointwise or pairwise."
    ),
    iteration: List[int] = typer.Option(
        [], "--iteration", "-i", help="Iteration whose responses to judge (repeatable; default: all)."
    ),
    n: Optional[int] = typer.Option(
        None, "--n", help="Judgements per response (pairwise: per ordered pair); default: the run's judge.n."
    ),
    score_mode: Optional[str] = typer.Option(
        None, "--score-mode", help="structured | free_text (default: the run's judge.score_mode)."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="Judge with this model: a version of the run (M1, M2, ...) or a model directory; default: each iteration's own model.",
    ),
    dirs: List[Path] = PromptDirs,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Re-judge a run's stored responses with another template, score mode or model (no new responses)."""
    from mrtk.rejudge import JudgeJob, load_judge_template, rejudge
    from mrtk.runs import find_run
    from mrtk.ui import QuietUI, RichUI

    t = load_judge_template(template, dirs)  # a malformed template fails here, before any model loads
    res = rejudge(
        find_run(run_), JudgeJob(t, tuple(iteration) or None, n, score_mode, model), QuietUI() if quiet else RichUI(err)
    )
    out.print(
        f"{res['written']} new rows in {res['table']} (template {t.name}, hash {t.hash}, iterations {res['iterations']}); "
        f"responses unchanged: {res['responses_before']} -> {res['responses_after']}"
    )


@app.command()
def study(
    study_file: Path = typer.Argument(
        ..., help="Study YAML: a base experiment, overrides for all, and the variants (experiments/study_cpu.yaml)."
    ),
    out_dir: Path = typer.Option(
        Path("study"),
        "--out",
        help="Directory of the study: one run per variant under OUT/<variant>/, study.md and study.json.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; the table only."),
) -> None:
    """Run one experiment per variant (again: finished variants are skipped, a stopped one resumed), then
    the variants side by side per iteration: meta-judge position bias and ties, judge agreement with
    humans, drift, pairs, DPO."""
    from mrtk.present.study import COLUMNS, cells, run_study
    from mrtk.ui import QuietUI, RichUI

    if not study_file.is_file():
        raise MrtkError(f"study file {study_file} does not exist; give a study YAML such as experiments/study_cpu.yaml")
    signal.signal(signal.SIGTERM, _terminate)
    _output_dir(out_dir, "--out")
    result = run_study(study_file, out_dir, QuietUI() if quiet else RichUI(err))
    table = Table(*COLUMNS, title=f"study {study_file.stem}: {out_dir}/study.md")
    for row in result["rows"]:
        table.add_row(*cells(row))
    out.print(table)


@app.command()
def compare(
    a: str = typer.Argument(
        ..., help="Judge set A: template name or hash, optionally :score_mode, :source (loop|rejudge), :M<k>."
    ),
    b: str = typer.Argument(..., help="Judge set B, same form."),
    run_: Optional[str] = typer.Option(None, "--run", help="Run directory or id (default: the latest under ./runs)."),
    iteration: Optional[int] = typer.Option(
        None, "--iteration", "-i", help="Only this iteration (default: all both sets judged)."
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json"),
) -> None:
    """Compare two judge set-ups on the same responses: distributions, ties, failures, length bias, agreement, pairs."""
    import json as _json

    from mrtk.present.compare import compare_run
    from mrtk.runs import find_run

    if fmt not in ("table", "json"):
        raise MrtkError(f"--format {fmt!r} is not one of table, json")
    res = compare_run(find_run(run_), a, b, iteration)
    if fmt == "json":
        sys.stdout.write(_json.dumps(res, indent=2, default=str) + "\n")
        return
    sa, sb = res["sets"]
    table = Table(
        "",
        res["labels"][0],
        res["labels"][1],
        title=f"judge sets compared over iterations {res['iterations']}",
        title_justify="left",
    )
    for key, name in (
        ("kind", "kind"),
        ("rows", "judgement rows"),
        ("parse_failure_rate", "parse failures"),
        ("responses_scored", "responses scored"),
        ("mean_score", "mean response score"),
        ("score_hist", "score histogram"),
        ("tie_rate", "tie rate (response pairs)"),
        ("score_length_corr", "score-length correlation"),
        ("first_position_share", "first-position verdicts"),
        ("position_consistency", "position consistency"),
        ("actor_pairs", "actor pairs built"),
    ):
        if key in sa or key in sb:
            table.add_row(name, _fmt(sa.get(key)), _fmt(sb.get(key)))
    ci = lambda c: "" if c is None else f" [{c[0]:.3f}, {c[1]:.3f}]"  # noqa: E731
    table.add_row(
        "actor pairs the other set reverses",
        *[f"{res['flipped'][i]} ({_fmt(res['flipped_share'][i])}{ci(res['flipped_ci'][i])})" for i in (0, 1)],
    )
    out.print(table)
    out.print(
        f"agreement on {res['compared_pairs']} response pairs both prefer strictly: {_fmt(res['agreement'])}"
        f"{ci(res['agreement_ci'])} (95% Wilson); identical actor pairs: {res['same_actor_pairs']}"
    )


eval_app = typer.Typer(
    no_args_is_help=True,
    help="Evaluate a run's models: AlpacaEval 2, Arena-Hard (external judges via LiteLLM), and the policy's own judge against human labels.",
)
app.add_typer(eval_app, name="eval")
EvalRun = typer.Option(None, "--run", help="Run directory or id (default: the latest under ./runs).")
EvalIteration = typer.Option(
    None, "--iteration", "-i", help="Evaluate the model iteration N trained (0: the seed model); default: the newest."
)
Limit = typer.Option(
    None, "--limit", help="Only the first N examples (quick looks; the full set for reported numbers)."
)
JudgeModel = typer.Option(
    "gpt-4-1106-preview",
    "--judge-model",
    help="Any LiteLLM model string (anthropic/..., hosted_vllm/NAME with --api-base, ...).",
)
ApiBase = typer.Option(None, "--api-base", help="Base URL of an OpenAI-compatible server (SGLang, vLLM, llama.cpp).")
MaxCost = typer.Option(None, "--max-cost", help="Stop before external calls would cost more than this many USD.")
DryReply = typer.Option(
    None,
    "--dry-run-reply",
    help="LiteLLM answers every call with this text instead of calling the API (free; for trying the pipeline).",
)
MaxNew = typer.Option(512, "--max-new-tokens", help="Longest policy answer, in tokens.")


def _judge(store, model, api_base, max_cost, dry, grader=None, *, temperature: float = 0.0, max_tokens: int = 512):
    """The external judge an eval command asks, with the grader's sampling (or the given one):
    `--dry-run-reply` answers instead of the API, unpriced."""
    from mrtk.evals.external import ExternalJudge

    if grader is not None:
        temperature, max_tokens = grader.temperature, grader.max_tokens
    return ExternalJudge(
        store,
        model,
        api_base=api_base,
        max_cost=max_cost,
        mock_response=dry,
        dry_run=dry is not None,
        temperature=temperature,
        max_tokens=max_tokens,
        extra=dict(grader.extra) if grader else {},
    )


def _print_eval(title: str, res: dict) -> None:
    table = Table("metric", "value", "95% interval", "n", title=title, title_justify="left")
    for metric, (v, lo, hi, n) in res["numbers"].items():
        table.add_row(metric, _fmt(v), "-" if lo is None else f"{lo:.3f} - {hi:.3f}", str(n))
    out.print(table)
    from mrtk.evals.health import verdict

    for metric, (v, lo, hi, n) in res["numbers"].items():
        if "change" in metric and v is not None:
            said = verdict({"diff": v, "ci_low": lo, "ci_high": hi, "n": n})
            interval = "" if lo is None else f" [{lo:.3f}, {hi:.3f}]"
            out.print(
                f"{metric}: {v:+.3f}{interval}, paired bootstrap over {n}: {said}"
                + (" (the interval contains 0)" if lo is not None and lo <= 0 <= hi else "")
            )
    if "cost_usd" in res:
        out.print(
            f"external judge: {res['calls']} calls, {res['cache_hits']} from cache, cost {res['cost_usd']:.4f} USD"
        )


@eval_app.command("alpaca")
def eval_alpaca(
    run_: Optional[str] = EvalRun,
    iteration: Optional[int] = EvalIteration,
    limit: Optional[int] = Limit,
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="AlpacaEval's JSON (instruction + GPT-4 Turbo reference output); default: fetched from the Hugging Face dataset.",
    ),
    judge_model: str = JudgeModel,
    api_base: Optional[str] = ApiBase,
    max_cost: Optional[float] = MaxCost,
    both_orders: bool = typer.Option(
        False, "--both-orders", help="Judge every example in both orders (twice the calls)."
    ),
    annotator: str = typer.Option(
        "weighted_alpaca_eval_gpt4_turbo",
        "--annotator",
        help="AlpacaEval annotator (the leaderboard's by default; read from the alpaca_eval package or --annotator-dir), "
        "or 'mrtk' for mrtk's paraphrase with hard verdicts (--template).",
    ),
    annotator_dir: Optional[Path] = typer.Option(
        None, "--annotator-dir", help="alpaca_eval's evaluators_configs/ folder, if the package is not installed."
    ),
    difficulty: Optional[Path] = typer.Option(
        None,
        "--difficulty",
        help="AlpacaEval's df_gamed.csv (instruction difficulty) for the LC GLM, if the Hugging Face cache has none.",
    ),
    template: str = typer.Option("eval_alpaca", "--template", help="Eval template (role: eval) for --annotator mrtk."),
    max_new_tokens: int = MaxNew,
    dry: Optional[str] = DryReply,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """AlpacaEval 2: win rate, standard error and length-controlled win rate against the reference answers."""
    from mrtk.backends import SamplingParams
    from mrtk import evaluate
    from mrtk.evals import pairwise as ev
    from mrtk.evals import graders
    from mrtk.evals.alpaca_official import load_annotator
    from mrtk.prompts import load_template
    from mrtk.runs import WriterLock, find_run
    from mrtk.ui import QuietUI, RichUI

    _check_eval_numbers(max_cost, max_new_tokens, limit, api_base)
    if difficulty is not None:
        from mrtk.evals.alpaca_official import check_difficulty_file

        check_difficulty_file(difficulty)
    grader = (
        graders.from_template(load_template(template, role="eval"))
        if annotator == "mrtk"
        else graders.from_annotator(load_annotator(annotator, annotator_dir))
    )
    run_dir = find_run(run_)  # before the data, which may come over the network
    examples = ev.load_instructions(data)[:limit]
    ev.check_references(examples)
    ui = QuietUI() if quiet else RichUI(err)
    with WriterLock(run_dir), evaluate.open_model(run_dir, iteration) as m:  # stops a launched SGLang server at the end
        judge = _judge(m.store, judge_model, api_base, max_cost, dry, grader)
        outputs = evaluate.answers(m, "alpaca", examples, SamplingParams(0.0, 1.0, max_new_tokens), ui)
        res = ev.alpaca(
            outputs,
            judge,
            examples,
            grader,
            store=m.store,
            seed=m.cfg.seed,
            iteration=m.iteration,
            version=m.version,
            both_orders=both_orders,
            ui=ui,
            difficulty=difficulty,
        )
    _print_eval(
        f"AlpacaEval 2, {m.version} (iteration {m.iteration}), judge {judge_model}, annotator "
        f"{annotator if annotator != 'mrtk' else 'mrtk paraphrase (hard verdicts; not the leaderboard annotator)'}",
        res,
    )


def _check_eval_numbers(
    max_cost: float | None, max_new_tokens: int, limit: int | None, api_base: str | None = None
) -> None:
    """Bad numbers and URLs are refused before any model or network work."""
    if api_base is not None:
        from mrtk.config import check_url

        try:
            check_url(api_base, "--api-base")
        except ValueError as e:
            raise MrtkError(str(e)) from None
    if max_cost is not None and max_cost < 0:
        raise MrtkError(f"--max-cost {max_cost:g}: give a budget of 0 USD or more")
    if max_new_tokens < 1:
        raise MrtkError(f"--max-new-tokens {max_new_tokens}: give at least 1")
    if limit is not None and limit < 1:
        raise MrtkError(f"--limit {limit}: give at least 1 example")


@eval_app.command("arena-hard")
def eval_arena(
    run_: Optional[str] = EvalRun,
    iteration: Optional[int] = EvalIteration,
    limit: Optional[int] = Limit,
    questions: str = typer.Option(..., "--questions", help="Arena-Hard question.jsonl (uid, prompt)."),
    baseline: str = typer.Option(..., "--baseline", help="Baseline answers (model_answer/gpt-4-0314.jsonl)."),
    judge_model: str = JudgeModel,
    api_base: Optional[str] = ApiBase,
    max_cost: Optional[float] = MaxCost,
    judge_config: Optional[Path] = typer.Option(
        None,
        "--judge-config",
        help="Arena-Hard-Auto's judge config (config/judge_config.yaml): "
        "its system prompt, template, max_tokens and verdict pattern.",
    ),
    template: str = typer.Option(
        "eval_arena_hard",
        "--template",
        help="Fallback eval template (role: eval, parser: arena) without --judge-config.",
    ),
    max_new_tokens: int = typer.Option(
        4096, "--max-new-tokens", help="Longest policy answer, in tokens (Arena-Hard-Auto: 4096)."
    ),
    dry: Optional[str] = DryReply,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Arena-Hard: two games per question (positions swapped) against the baseline; score with a bootstrap 95% interval."""
    from mrtk.backends import SamplingParams
    from mrtk import evaluate
    from mrtk.evals import pairwise as ev
    from mrtk.evals import graders
    from mrtk.evals.arena_config import fallback_judge, load_judge_config
    from mrtk.prompts import load_template
    from mrtk.runs import WriterLock, find_run
    from mrtk.ui import QuietUI, RichUI

    _check_eval_numbers(max_cost, max_new_tokens, limit, api_base)
    grader = graders.from_arena(
        load_judge_config(judge_config) if judge_config else fallback_judge(load_template(template, role="eval"))
    )
    qs, base = ev.load_arena(questions, baseline, limit)
    run_dir = find_run(run_)
    ui = QuietUI() if quiet else RichUI(err)
    with WriterLock(run_dir), evaluate.open_model(run_dir, iteration) as m:  # stops a launched SGLang server at the end
        judge = _judge(m.store, judge_model, api_base, max_cost, dry, grader)
        outputs = evaluate.answers(m, "arena-hard", qs, SamplingParams(0.0, 1.0, max_new_tokens), ui)
        res = ev.arena_hard(
            outputs, judge, qs, base, grader, store=m.store, seed=m.cfg.seed, iteration=m.iteration, ui=ui
        )
    _print_eval(
        f"Arena-Hard, {m.version} (iteration {m.iteration}), judge {judge_model}, judge prompt: {grader.source}",
        res,
    )


@eval_app.command("audit")
def eval_audit(
    run_: Optional[str] = EvalRun,
    judge_model: str = JudgeModel,
    api_base: Optional[str] = ApiBase,
    max_cost: Optional[float] = MaxCost,
    sample: int = typer.Option(
        50,
        "--sample",
        help="Responses to audit, spread evenly over the iterations (both responses of each sampled pair).",
    ),
    dry: Optional[str] = DryReply,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """An external judge re-scores a stratified sample of the loop's own judgements (same prompt and rubric): per iteration
    its correlation with the self-judge, the mean bias, and the share of actor pairs it would reverse. Evaluation only."""
    from mrtk.evals.audit import audit
    from mrtk.prompts import load_template
    from mrtk.runs import WriterLock, find_run, open_run
    from mrtk.ui import QuietUI, RichUI

    _check_eval_numbers(max_cost, 1, None, api_base)
    if sample < 2:
        raise MrtkError(f"--sample {sample}: give at least 2 responses (one pair)")
    run_dir = find_run(run_)
    with WriterLock(run_dir):
        store, cfg, config_dir = open_run(run_dir)
        template = load_template(cfg.judge.template, [str(d) for d in cfg.prompts.template_dirs], role="judge")
        judge = _judge(store, judge_model, api_base, max_cost, dry, temperature=0.0, max_tokens=512)
        res = audit(store, cfg.seed, judge, template, sample, ui=QuietUI() if quiet else RichUI(err))
    table = Table(
        "iteration",
        "metric",
        "value",
        "95% interval",
        "n",
        title=f"audit of the self-judge by {judge_model}",
        title_justify="left",
    )
    for it, numbers in res["iterations"].items():
        for metric, (v, lo, hi, n) in numbers.items():
            table.add_row(str(it), metric, _fmt(v), "-" if lo is None else f"{lo:.3f} - {hi:.3f}", str(n))
    out.print(table)
    out.print(f"external judge: {res['calls']} calls, {res['cache_hits']} from cache, cost {res['cost_usd']:.4f} USD")


@eval_app.command("judge")
def eval_judge(
    data: str = typer.Argument(
        ...,
        help="Human-labelled pairs (LLMBar / MT-Bench human, OASST pairs or ranked lists, PandaLM); "
        "a path, or a shipped set: probe_human.jsonl.",
    ),
    run_: Optional[str] = EvalRun,
    iteration: Optional[int] = EvalIteration,
    limit: Optional[int] = Limit,
    template: Optional[str] = typer.Option(
        None, "--template", "-t", help="Judge template (default: the run's judge template)."
    ),
    n: Optional[int] = typer.Option(None, "--n", help="Judgements per answer (default: the run's judge.n)."),
    verdict: Optional[str] = typer.Option(
        None,
        "--verdict",
        help="Pairwise templates: hard (each sampled verdict votes) or soft (p(A) "
        "averaged over both orders; needs score_mode structured); default: the run's judge.verdict.",
    ),
    dirs: List[Path] = PromptDirs,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """The policy's own judge against human labels: agreement (95% interval), without ties, position consistency, Spearman."""
    from mrtk.data import load_human_pairs, resolve_data_file
    from mrtk import evaluate
    from mrtk.rejudge import load_judge_template
    from mrtk.runs import WriterLock, find_run
    from mrtk.ui import QuietUI, RichUI

    _check_eval_numbers(None, 1, limit)
    if n is not None and n < 1:
        raise MrtkError(f"--n {n}: give at least 1 judgement per answer")
    if verdict not in (None, "hard", "soft"):
        raise MrtkError(f"--verdict {verdict!r}: give hard or soft")
    pairs, lists = load_human_pairs(
        str(resolve_data_file(data, None, "DATA", fix="give a path, or a shipped set: probe_human.jsonl"))
    )
    pairs, lists = pairs[:limit], lists[:limit]
    run_dir = find_run(run_)
    with WriterLock(run_dir), evaluate.open_model(run_dir, iteration) as m:  # stops a launched SGLang server at the end
        t_judge = load_judge_template(template or m.cfg.judge.template, dirs)
        if verdict == "soft" and t_judge.stage == "pairwise-judge" and m.cfg.judge.score_mode != "structured":
            raise MrtkError(
                "--verdict soft reads the pairwise judge's A/B probabilities, which only judge.score_mode structured has; "
                "drop --verdict or judge in structured mode"
            )
        res = evaluate.judge_agreement(
            m.store,
            m.cfg,
            m.iteration,
            m.version,
            m.backend,
            pairs,
            lists,
            t_judge,
            n=n,
            name=f"judge:{Path(data).stem}",
            ui=QuietUI() if quiet else RichUI(err),
            verdict=verdict,
        )
    _print_eval(
        f"judge agreement with humans: {res['judge']} on {Path(data).name} ({len(pairs)} pairs, {len(lists)} ranked lists)",
        res,
    )


data_app = typer.Typer(no_args_is_help=True, help="Build training data with the policy: EFT data from human rankings.")
app.add_typer(data_app, name="data")


@data_app.command("eft")
def data_eft(
    lists: str = typer.Argument(
        ...,
        help="Open Assistant ranked lists: the export's trees (.trees.jsonl[.gz]), the oasst1 message table "
        "(.parquet, .jsonl[.gz]) or ranked-list JSONL; a path, or the shipped sample oasst_ranked_sample.jsonl.",
    ),
    out_file: Path = typer.Option(..., "--out", "-o", help="SFT file to write (its statistics go beside it)."),
    config: Optional[str] = typer.Option(
        None,
        "--config",
        help="Experiment whose seed model, backend and judge write the judgements (default: default); "
        "a new run directory under --runs holds them.",
    ),
    set_: List[str] = typer.Option([], "--set", help="Override a config key of --config (repeatable)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs", help="Parent of the new run directory (default: runs)."),
    run_: Optional[str] = typer.Option(
        None, "--run", help="Judge with a model of this existing run instead (see --iteration)."
    ),
    iteration: Optional[int] = typer.Option(
        None, "--iteration", "-i", help="With --run: the model iteration N trained (0, the default: its seed model)."
    ),
    lang: Optional[str] = typer.Option(
        None, "--lang", help="Keep lists whose question is in this language (default en, as Self-Rewarding; all: any)."
    ),
    n: Optional[int] = typer.Option(None, "--n", help="Judgements per answer (default: the run's judge.n)."),
    template: Optional[str] = typer.Option(
        None, "--template", "-t", help="Pointwise judge template (default: the run's judge template)."
    ),
    cap: Optional[int] = typer.Option(
        None,
        "--cap-per-score",
        help="Rebalance (off by default): keep at most this many examples per rounded score, a seeded sample.",
    ),
    limit: Optional[int] = Limit,
    dirs: List[Path] = PromptDirs,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """EFT data as Self-Rewarding builds it: the model judges each human-ranked answer N times; lists whose
    mean scores rank the answers as the humans did become SFT examples (judge prompt -> judgement)."""
    from mrtk import eft
    from mrtk.config import load_config, resolve_config_path
    from mrtk.data import load_ranked_lists, resolve_data_file
    from mrtk import evaluate
    from mrtk.runs import WriterLock, find_run, new_run
    from mrtk.ui import QuietUI, RichUI

    _check_eval_numbers(None, 1, limit)
    if n is not None and n < 1:
        raise MrtkError(f"--n {n}: give at least 1 judgement per answer")
    if cap is not None and cap < 1:
        raise MrtkError(f"--cap-per-score {cap}: give at least 1, or leave it out (no rebalancing)")
    if run_ is not None and (config is not None or set_ or runs_dir is not None):
        raise MrtkError("--run judges with that run's model and config; drop --config, --set and --runs")
    if run_ is None and iteration is not None:
        raise MrtkError("--iteration picks a model of an existing run; give --run too, or drop --iteration")
    _output_file(out_file, "--out")
    path = resolve_data_file(lists, None, "LISTS", fix="give a path, or the shipped sample oasst_ranked_sample.jsonl")
    ranked, counts = load_ranked_lists(path, lang)
    ranked = ranked[:limit]
    if not ranked:
        raise MrtkError(f"{path} holds no ranked lists in language {lang or 'en'}; try --lang all")
    ui = QuietUI() if quiet else RichUI(err)
    if run_ is None:
        cfg_path = resolve_config_path(config)
        cfg = load_config(cfg_path, set_)
        if cfg.sft.file:
            raise MrtkError(
                "EFT data is judged by the seed model, before any SFT; drop sft.file from the config (--set sft.file=null)"
            )
        cfg.prompts.template_dirs = cfg.prompts.template_dirs + [str(d.resolve()) for d in dirs]
        t_judge = eft.judge_template(template or cfg.judge.template, cfg.prompts.template_dirs)
        _checked(ui, cfg, cfg_path.parent, True)
        run_dir = new_run(cfg, str(cfg_path.resolve()), _output_dir(runs_dir or Path("runs"), "--runs")).run_dir
    else:
        run_dir, t_judge = find_run(run_), None
    with WriterLock(run_dir), evaluate.open_model(run_dir, iteration or 0) as m:
        t_judge = t_judge or eft.judge_template(template or m.cfg.judge.template, [*m.cfg.prompts.template_dirs, *dirs])
        res = evaluate.judge_agreement(
            m.store, m.cfg, m.iteration, m.version, m.backend, [], ranked, t_judge, n=n, name=eft.EVAL, ui=ui
        )
        examples, stats = eft.build(
            res, ranked, t_judge, store=m.store, seed=m.cfg.seed, iteration=m.iteration, version=m.version, cap=cap
        )
    stats |= {"source": str(path), "read": counts}
    stats_path = eft.write(out_file, examples, stats)
    agreement = stats["agreement"].get("list_agreement")
    out.print(
        f"{stats['examples']} examples from {stats['kept_lists']} of {stats['lists']} ranked lists "
        f"({counts['form']}; {counts['other_language']} in other languages left out) -> {out_file}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"judge {stats['judge']}: agreement with the human ranks "
        + (
            f"{agreement[0]:.3f} [{agreement[1]:.3f}, {agreement[2]:.3f}] over {agreement[3]} pairs"
            if agreement
            else "n/a"
        )
        + f"; scores kept {stats['score_histogram']}"
        + (f"; {stats['dropped_by_cap']} dropped by --cap-per-score {cap}" if cap else ""),
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"statistics: {stats_path}; judgements: mrtk query --run {run_dir} \"select * from eval_items where eval = 'eft'\"",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"next: mrtk run --set sft.file={out_file}", highlight=False, soft_wrap=True)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="Small sizes: a smoke test of every workload in about a minute."),
    only: List[str] = typer.Option(
        [],
        "--only",
        help="Only workloads starting with this (actor, judge, meta, dpo, duckdb, serving); "
        "repeatable. serving: the SGLang path against simulated servers (1, 4, a router; one iteration staged and "
        "streamed on 64-slot servers; the client's CPU per sample), never run unasked.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    set_: List[str] = typer.Option(
        [],
        "--set",
        help="Change a setting of the default experiment the workloads use (key=value, as mrtk run); repeatable.",
    ),
) -> None:
    """Measure mrtk's fast paths against plain baselines on this machine (ratios, ceilings, peak memory)."""
    from mrtk.bench.workloads import fmt_table, run_bench, to_json

    known = ("actor", "judge", "meta", "dpo", "duckdb", "serving")
    unknown = [o for o in only if not any(w.startswith(o) or o.startswith(w) for w in known)]
    if unknown:
        raise MrtkError(f"--only {unknown[0]!r} matches no workload; use a prefix of {', '.join(known)}")
    if only and all("serving".startswith(o) for o in only):
        import json

        from mrtk.bench.serving import client_cost, fmt, fmt_client, fmt_window, iteration_window, run_serving_bench

        report = run_serving_bench(quick=quick)
        report["window"] = iteration_window(quick=quick)
        report["client"] = client_cost(quick=quick)
        sys.stdout.write(
            json.dumps(report, indent=1) + "\n"
            if as_json
            else "\n".join((fmt(report), fmt_window(report["window"]), fmt_client(report["client"]))) + "\n"
        )
        return
    report = run_bench(
        quick=quick,
        only=only or None,
        overrides=set_,
        on_result=None
        if as_json
        else lambda r: err.print(
            f"  {r.workload}: {r.ours:.1f} {r.unit} (baseline {r.baseline if r.baseline is None else round(r.baseline, 1)})",
            highlight=False,
        ),
    )
    if as_json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        Console(width=200).print(fmt_table(report))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return " ".join(f"{k}:{c}" for k, c in v.items())
    return str(v)


if __name__ == "__main__":
    main()
