"""The `mrtk` command. The one place that turns MrtkError into a red line and an exit code."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import warnings  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mrtk.errors import MrtkError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mrtk: the Meta-Rewarding toolkit. Run self-improving actor/judge/meta-judge loops and query every call.")
err = Console(stderr=True)
out = Console()


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
) -> None:
    """Run the Meta-Rewarding loop (or resume one) and log every model call in DuckDB."""
    from mrtk.config import load_config, resolve_config_path
    from mrtk.loop import Loop, check_inputs
    from mrtk.runs import WriterLock, find_run, new_run, open_run, set_status
    from mrtk.ui import QuietUI, RichUI

    ui = QuietUI() if quiet else RichUI(err)
    if resume:
        if config or set_:
            raise MrtkError("--resume continues a run with its stored config; drop CONFIG and --set")
        run_dir = find_run(resume)
        store, cfg, config_dir = open_run(run_dir)
        inputs = check_inputs(cfg, config_dir)
    else:
        path = resolve_config_path(config)
        cfg = load_config(path, set_)
        inputs = check_inputs(cfg, path.parent)
        store = new_run(cfg, str(path.resolve()), out_dir)
    with WriterLock(store.run_dir):
        ui.info(f"run [bold]{store.run_dir}[/bold]")
        try:
            Loop(store, cfg, inputs, ui).run()
        except KeyboardInterrupt:
            set_status(store, "interrupted")
            raise MrtkError(f"interrupted; resume with: mrtk run --resume {store.run_dir}") from None
        except MrtkError as e:
            set_status(store, "error", str(e))
            raise
        except Exception as e:
            set_status(store, "error", f"{type(e).__name__}: {e}")
            raise
    ui.info(f"[green]done[/green]: {store.run_dir}  (inspect with: mrtk query \"select * from pairs\" --run {store.run_dir})")


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL to run, or - to read it from stdin."),
    run_: Optional[str] = typer.Option(None, "--run", help="Run directory or id (default: the latest under ./runs)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    param: List[str] = typer.Option([], "--param", "-p", help="Named parameter for $name in the SQL: -p name=value."),
    limit: int = typer.Option(200, "--limit", help="Most rows shown as a table (csv/json print all)."),
) -> None:
    """Read-only SQL over a run's DuckDB (tables: runs, prompts, responses, judgements, meta_judgements, elo, pairs, train_metrics, lineage)."""
    from mrtk.runs import find_run
    from mrtk.store.db import DB_NAME
    from mrtk.store.query import as_csv, as_json, run_query

    if fmt not in ("table", "csv", "json"):
        raise MrtkError(f"--format {fmt!r} is not one of table, csv, json")
    if sql == "-":
        sql = sys.stdin.read()
    params = {}
    for item in param:
        if "=" not in item:
            raise MrtkError(f"--param {item!r}: expected name=value")
        k, v = item.split("=", 1)
        params[k] = v
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

    table = Table("run", "status", "iterations", "judgements", "unparsed", "pairs kept", "last DPO loss")
    for r in list_runs(root):
        table.add_row(*[str(r[k]) for k in ("run", "status", "iterations", "judgements", "unparsed", "pairs", "loss")])
    out.print(table)


@app.command()
def report(
    run_: Optional[str] = typer.Argument(None, metavar="RUN", help="Run directory or id (default: the latest under ./runs)."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="HTML file (default RUN/report.html), or the PNG folder with --format png."),
    fmt: str = typer.Option("html", "--format", "-f", help="html | png"),
) -> None:
    """Charts of a run per iteration: scores, lengths, pairs, DPO, meta-judge biases, Elo, evals."""
    from mrtk.report import render_html, write_pngs
    from mrtk.runs import find_run

    run_dir = find_run(run_)
    if fmt == "png":
        written = write_pngs(run_dir, out_path or run_dir / "report")
        out.print(f"wrote {len(written)} charts to {(out_path or run_dir / 'report')}")
    elif fmt == "html":
        target = out_path or run_dir / "report.html"
        target.write_text(render_html(run_dir), encoding="utf-8")
        out.print(f"wrote {target}")
    else:
        raise MrtkError(f"--format {fmt!r} is not one of html, png")


if __name__ == "__main__":
    main()
