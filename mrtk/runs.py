"""Run directories: creating and reopening runs, the writer lock, status, model saving.

A run directory holds `mrtk.duckdb`, `models/M<t>/` (the merged model each iteration
produced) and `.lock` (held by the one process writing the run).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import uuid
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mrtk import faults
from mrtk.config import RunConfig, dump_config, validate_config
from mrtk.errors import MrtkError
from mrtk.store import RunStore
from mrtk.store.db import DB_NAME

RUNS_DIR = "runs"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mrtk", "torch", "transformers", "trl", "peft", "duckdb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_rev() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def new_run(cfg: RunConfig, config_path: str, out: Path) -> RunStore:
    run_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.name}-{uuid.uuid4().hex[:4]}"
    store = RunStore(out / run_id)
    store.migrate()
    now = datetime.now()
    store.write("runs", [{
        "run_id": run_id, "status": "started", "created_at": now, "updated_at": now, "config": dump_config(cfg),
        "config_path": config_path, "seed": cfg.seed, "versions": versions(), "git_rev": git_rev(),
        "base_model": cfg.model, "iterations": cfg.iterations,
    }])
    return store


def open_run(run_dir: Path) -> tuple[RunStore, RunConfig, Path]:
    """Reopen a run to resume it: (store, the config it was started with, that config's folder)."""
    if not (run_dir / DB_NAME).is_file():
        raise MrtkError(f"no run at {run_dir} (no {DB_NAME}); pass a run directory such as runs/<run_id>")
    store = RunStore(run_dir)
    store.migrate()
    rows = store.fetch("SELECT config, config_path FROM runs")
    if not rows:
        raise MrtkError(f"run {run_dir} has no runs row; it was never started properly, start a new run")
    config_dir = Path(rows[0]["config_path"] or ".").resolve().parent
    return store, validate_config(json.loads(rows[0]["config"]), f"stored config of {run_dir}"), config_dir


def set_status(store: RunStore, status: str, error: str | None = None) -> None:
    with store.tx() as con:
        con.execute("UPDATE runs SET status = ?, updated_at = ?, error = ?", [status, datetime.now(), error]).fetchall()


class WriterLock:
    """One writing process per run: a second `mrtk run --resume` on a live run is refused."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fh = None

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            pid = self.fh.read().strip() or "?"
            raise MrtkError(f"run {self.path.parent} is being written by another process (pid {pid}); wait for it or stop it first") from None
        self.fh.truncate(0)
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.fh:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def save_model(model, tokenizer, target: Path) -> None:
    """Write a model directory atomically: a crash leaves either the old state or the whole model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*"):  # left by a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    faults.point("save_model")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def latest_run(root: Path = Path(RUNS_DIR)) -> Path:
    runs = sorted((p for p in root.glob(f"*/{DB_NAME}")), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not runs:
        raise MrtkError(f"no runs under {root}/; run `mrtk run` first or pass --run RUN_DIR")
    return runs[-1].parent


def find_run(name: str | None) -> Path:
    if name is None:
        return latest_run()
    for candidate in (Path(name), Path(RUNS_DIR) / name):
        if (candidate / DB_NAME).is_file():
            return candidate
        if candidate.suffix == ".duckdb" and candidate.is_file():
            return candidate.parent
    raise MrtkError(f"run {name!r} not found; pass a run directory (runs/<run_id>) or a run id under ./runs")


def list_runs(root: Path) -> list[dict]:
    """One summary dict per run under `root`, oldest first."""
    from mrtk.store.db import open_readonly

    found = []
    for db in sorted(root.glob(f"*/{DB_NAME}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []:
        con = open_readonly(db, wait_s=5)
        try:
            status, done_its, planned = con.execute(
                "SELECT status, (SELECT count(*) FROM lineage), iterations FROM runs").fetchall()[0]
            n, unparsed = con.execute("SELECT count(*), count(*) - count(score) FROM judgements WHERE source = 'loop'").fetchall()[0]
            kept = con.execute("SELECT count(*) FROM pairs WHERE status = 'kept'").fetchall()[0][0]
            loss = con.execute("SELECT arg_max(loss, iteration * 100000 + step) FROM train_metrics").fetchall()[0][0]
        finally:
            con.close()
        found.append({"run": db.parent.name, "status": status, "iterations": f"{done_its}/{planned}", "judgements": n,
                      "unparsed": unparsed, "pairs": kept, "loss": "-" if loss is None else f"{loss:.3f}"})
    return found
