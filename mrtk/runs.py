"""Run directories: creating and reopening runs, the writer lock, the status lifecycle, a run's
model versions, and persisting a stage's rows chunk by chunk.

A run directory holds `mrtk.duckdb`, `models/M<t>/` (the merged model each iteration
produced) and `.lock` (held by the one process writing the run).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import uuid
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mrtk.config import RunConfig, dump_config, validate_config
from mrtk.errors import MrtkError
from mrtk.models import resolve_model
from mrtk.rows import parse_version
from mrtk.store import RunStore
from mrtk.store.db import DB_NAME, is_write_failure

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
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return res.stdout.strip() if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def new_run(cfg: RunConfig, config_path: str, out: Path) -> RunStore:
    run_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.name}-{uuid.uuid4().hex[:4]}"
    store = RunStore(out / run_id)
    store.migrate()
    now = datetime.now()
    store.write(
        "runs",
        [
            {
                "run_id": run_id,
                "status": "started",
                "created_at": now,
                "updated_at": now,
                "config": dump_config(cfg),
                "config_path": config_path,
                "seed": cfg.seed,
                "versions": versions(),
                "git_rev": git_rev(),
                "base_model": cfg.model,
                "iterations": cfg.iterations,
            }
        ],
    )
    return store


def open_run(run_dir: Path) -> tuple[RunStore, RunConfig, Path]:
    """Reopen a run to resume it: (store, the config it was started with, that config's folder)."""
    if not (run_dir / DB_NAME).is_file():
        raise MrtkError(f"no run at {run_dir} (no {DB_NAME}); pass a run directory such as runs/<run_id>")
    store = RunStore(run_dir)
    store.migrate()
    row = store.config()
    if row is None:
        raise MrtkError(f"run {run_dir} has no runs row; it was never started properly, start a new run")
    config_dir = Path(row["config_path"] or ".").resolve().parent
    return store, validate_config(json.loads(row["config"]), f"stored config of {run_dir}"), config_dir


@contextmanager
def lifecycle(store: RunStore):
    """A run's status, in one place: running, then success; or interrupted (Ctrl-C, SIGTERM) or
    error with its message, recorded before the error goes on as one line. Disk full is an error
    that names its fix; nothing recorded before it is lost."""
    store.set_status("running")
    try:
        yield
    except KeyboardInterrupt:
        _ended(store, "interrupted")
        raise MrtkError(f"interrupted; resume with: mrtk run --resume {store.run_dir}") from None
    except MrtkError as e:
        _ended(store, "error", str(e))
        raise
    except Exception as e:
        if is_write_failure(e):  # disk full while saving a model or a checkpoint
            _ended(store, "error", str(e))
            raise MrtkError(
                f"writing to {store.run_dir} failed ({' '.join(str(e).split())[-100:]}); nothing recorded before "
                f"it is lost: free disk space, then: mrtk run --resume {store.run_dir}"
            ) from None
        _ended(store, "error", f"{type(e).__name__}: {e}")
        raise
    store.set_status("success")


def _ended(store: RunStore, status: str, error: str | None = None) -> None:
    """Best effort: the run row says how it ended, unless the failure was the database itself."""
    try:
        store.set_status(status, error)
    except MrtkError:
        pass


def model_for(store: RunStore, cfg: RunConfig, version: str) -> str:
    """The model directory of a run's model version: M1 is the base model (or the SFT output, and then
    M0 the base model), M<t+1> is what iteration t trained."""
    parsed = parse_version(version)
    if not parsed or parsed[0] != "M" or (parsed[1] < 1 and not (version == "M0" and cfg.sft.file)):
        raise MrtkError(
            f"model version {version!r} is not M1, M2, ... (M0: the model before SFT, where sft.file is set); "
            "name one of this run's models"
        )
    if version == "M0":  # the base model SFT started from (CREAM's first round re-ranks with it)
        return resolve_model(cfg.model)
    t = parsed[1] - 1
    if t == 0 and not cfg.sft.file:
        return resolve_model(cfg.model)
    path = store.output_model(t)
    if path is None or not path.is_dir():
        raise MrtkError(
            f"run {store.run_dir} has no model {version} on disk (iteration {t} did not finish training); "
            "pick an earlier model version"
        )
    return str(path)


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
            raise MrtkError(
                f"run {self.path.parent} is being written by another process (pid {pid}); wait for it or stop it first"
            ) from None
        self.fh.truncate(0)
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.fh:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


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
    from mrtk.store.reads import run_summary

    dbs = sorted(root.glob(f"*/{DB_NAME}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    return [run_summary(db) for db in dbs]
