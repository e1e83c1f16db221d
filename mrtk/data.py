"""The prompt pool: a JSONL file, validated whole before any model loads.

Each line is a JSON object with the prompt under `prompt` (or `instruction` / `text`) and
optionally an `id`. Bad lines, empty prompts, duplicates and non-UTF-8 bytes are errors
naming the line, not rows to discover halfway through a run.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from mrtk.errors import MrtkError
from mrtk.resources import asset_dir
from mrtk.rows import derive_seed

TEXT_KEYS = ("prompt", "instruction", "text")


def resolve_data_file(name: str, config_dir: Path | None = None, key: str = "prompts.file") -> Path:
    """A data file named in a config: as given (or from the cwd), beside the config, or shipped in data/."""
    for candidate in (Path(name).expanduser(), (config_dir or Path(".")) / name, asset_dir("data") / name):
        if candidate.is_file():
            return candidate
    raise MrtkError(f"{key} {name!r} not found; give a JSONL path (absolute, or relative to the config; the shipped pool is train_prompts.jsonl)")


def resolve_dir(name: str, config_dir: Path | None, key: str) -> Path:
    """A directory named in a config: as given (or from the cwd), or beside the config."""
    for candidate in (Path(name).expanduser(), (config_dir or Path(".")) / name):
        if candidate.is_dir():
            return candidate.resolve()
    raise MrtkError(f"{key} {name!r} is not a directory; give an absolute path or one relative to the config")


def read_jsonl(path: Path, label: str):
    """(line number, object) for each non-blank line; a bad line is a MrtkError naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MrtkError(f"{label} {path} not found; check the path") from None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise MrtkError(f"{label} {path}: line {line} is not UTF-8; re-encode the file as UTF-8") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MrtkError(f"{label} {path}: line {n} is not valid JSON ({e.msg}); fix or remove it") from None
        if not isinstance(obj, dict):
            raise MrtkError(f"{label} {path}: line {n} must be a JSON object like {{\"prompt\": \"...\"}}")
        yield n, obj


def load_pool(path: Path) -> list[dict]:
    """[{prompt_id, text, source}] from a JSONL file, or a MrtkError naming the bad line."""
    pool, seen_text, seen_id = [], {}, set()
    for n, obj in read_jsonl(path, "prompts file"):
        text = next((obj[k] for k in TEXT_KEYS if k in obj), None)
        if not isinstance(text, str):
            raise MrtkError(f"prompts file {path}: line {n} has no string field 'prompt' (or 'instruction'/'text'); add one")
        if not text.strip():
            raise MrtkError(f"prompts file {path}: line {n} has an empty prompt; remove the line")
        if text in seen_text:
            raise MrtkError(f"prompts file {path}: line {n} repeats the prompt of line {seen_text[text]}; remove the duplicate")
        seen_text[text] = n
        pid = str(obj.get("id") or hashlib.sha1(text.encode()).hexdigest()[:12])
        if pid in seen_id:
            raise MrtkError(f"prompts file {path}: line {n} repeats the id {pid!r}; ids must be unique")
        seen_id.add(pid)
        pool.append({"prompt_id": pid, "text": text, "source": path.name})
    if len(pool) < 1:
        raise MrtkError(f"prompts file {path} holds no prompts; add JSON lines like {{\"prompt\": \"...\"}}")
    return pool


def prompts_for_iteration(pool: list[dict], per_iteration: int, iteration: int, seed: int) -> list[dict]:
    """Iteration t takes the t-th slice of a seeded walk through the pool (reshuffled each pass),
    so iterations see different prompts while the pool lasts (paper: 5,000 of 20,000 each)."""
    per_iteration = min(per_iteration, len(pool))
    order: list[dict] = []
    passes = 0
    while len(order) < per_iteration * iteration:
        walk = list(pool)
        random.Random(derive_seed(seed, "pool", passes)).shuffle(walk)
        order.extend(walk)
        passes += 1
    return order[per_iteration * (iteration - 1): per_iteration * iteration]
