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


def resolve_data_file(
    name: str,
    config_dir: Path | None = None,
    key: str = "prompts.file",
    shipped: str = "data",
    fix: str = "give a JSONL path (absolute, or relative to the config; the shipped pool is train_prompts.jsonl)",
) -> Path:
    """A file named in a config: as given (or from the cwd), beside the config, or shipped (in data/,
    or in experiments/ for accelerate configs)."""
    for candidate in (Path(name).expanduser(), (config_dir or Path(".")) / name, asset_dir(shipped) / name):
        if candidate.is_file():
            return candidate
    raise MrtkError(f"{key} {name!r} not found; {fix}")


def resolve_dir(name: str, config_dir: Path | None, key: str) -> Path:
    """A directory named in a config: as given (or from the cwd), or beside the config."""
    for candidate in (Path(name).expanduser(), (config_dir or Path(".")) / name):
        if candidate.is_dir():
            return candidate.resolve()
    raise MrtkError(f"{key} {name!r} is not a directory; give an absolute path or one relative to the config")


def read_jsonl(path: Path, label: str, data: bytes | None = None):
    """(line number, object) for each non-blank line (of `data` when given: a file's bytes already
    read, such as a decompressed one); a bad line is a MrtkError naming it."""
    if data is None:
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
            raise MrtkError(f'{label} {path}: line {n} must be a JSON object like {{"prompt": "..."}}')
        yield n, obj


def load_pool(path: Path) -> list[dict]:
    """[{prompt_id, text, source, checks}] from a JSONL file, or a MrtkError naming the bad line.
    `checks`: the line's IFEval instructions (`instruction_id_list` + `kwargs`, checked to be
    runnable: mrtk.verify), else None. An IFEval line's `key` is its id."""
    from mrtk.verify import parse_checks

    pool, seen_text, seen_id = [], {}, set()
    for n, obj in read_jsonl(path, "prompts file"):
        text = next((obj[k] for k in TEXT_KEYS if k in obj), None)
        if not isinstance(text, str):
            raise MrtkError(
                f"prompts file {path}: line {n} has no string field 'prompt' (or 'instruction'/'text'); add one"
            )
        if not text.strip():
            raise MrtkError(f"prompts file {path}: line {n} has an empty prompt; remove the line")
        if text in seen_text:
            raise MrtkError(
                f"prompts file {path}: line {n} repeats the prompt of line {seen_text[text]}; remove the duplicate"
            )
        seen_text[text] = n
        pid = str(obj.get("id") or obj.get("key") or hashlib.sha1(text.encode()).hexdigest()[:12])
        if pid in seen_id:
            raise MrtkError(f"prompts file {path}: line {n} repeats the id {pid!r}; ids must be unique")
        seen_id.add(pid)
        checks = parse_checks(obj, f"prompts file {path}: line {n}")
        pool.append(
            {"prompt_id": pid, "text": text, "source": path.name, "checks": checks.as_json() if checks else None}
        )
    if len(pool) < 1:
        raise MrtkError(f'prompts file {path} holds no prompts; add JSON lines like {{"prompt": "..."}}')
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
    return order[per_iteration * (iteration - 1) : per_iteration * iteration]


def read_json_or_jsonl(path: Path, label: str = "eval data", data: bytes | None = None) -> list:
    """A JSON list (or one object), else JSONL read by `read_jsonl` (of `data` when given): a bad line
    or a byte that is not UTF-8 is an error naming its line."""
    if data is None:
        if not path.is_file():
            raise MrtkError(f"{label} {path} not found; check the path")
        data = path.read_bytes()
    try:
        whole = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return [obj for _, obj in read_jsonl(path, label, data)]
    return whole if isinstance(whole, list) else [whole]


def load_human_pairs(path: str, records: list | None = None) -> tuple[list[dict], list[dict]]:
    """(pairs, ranked lists) from a human-labelled file: LLMBar-style {input, output_1, output_2,
    label 1|2}, OASST pairs {context, response_a, response_b, label a|b}, PandaLM {instruction,
    input, response1, response2, annotator1..3} (majority; ties skipped), or OASST ranked lists
    {context, replies: [{text, rank}]}. `records`: the file's objects, when already read."""
    pairs, lists = [], []
    for i, r in enumerate(records if records is not None else read_json_or_jsonl(Path(path))):
        eid = str(r.get("id", r.get("idx", r.get("message_tree_id", i))))
        if "output_1" in r:
            pairs.append(
                {
                    "example_id": eid,
                    "question": r["input"],
                    "a": r["output_1"],
                    "b": r["output_2"],
                    "label": "a" if int(r["label"]) == 1 else "b",
                }
            )
        elif "response_a" in r:
            pairs.append(
                {
                    "example_id": eid,
                    "question": _context(r["context"]),
                    "a": r["response_a"],
                    "b": r["response_b"],
                    "label": r["label"],
                }
            )
        elif "response1" in r:
            votes = [r.get(f"annotator{k}") for k in (1, 2, 3)]
            a, b = votes.count(1), votes.count(2)
            if a != b:
                question = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
                pairs.append(
                    {
                        "example_id": eid,
                        "question": question,
                        "a": _text(r["response1"]),
                        "b": _text(r["response2"]),
                        "label": "a" if a > b else "b",
                    }
                )
        elif "replies" in r:
            lists.append(
                {
                    "example_id": f"{eid}/{i}",
                    "question": _context(r["context"]),
                    "replies": [(x["text"], x["rank"]) for x in r["replies"]],
                }
            )
        else:
            raise MrtkError(
                f"{path}: item {i} is not a known human-labelled format (LLMBar, OASST pairs or lists, PandaLM)"
            )
    if not pairs and not lists:
        raise MrtkError(f"{path} holds no labelled pairs")
    return pairs, lists


def _text(value) -> str:
    """Answers as text: PandaLM has a few JSON booleans and numbers where answers go."""
    return value if isinstance(value, str) else json.dumps(value)


def _context(ctx) -> str:
    if isinstance(ctx, str):
        return ctx
    return (
        "\n\n".join(f"{'User' if m['role'] == 'prompter' else 'Assistant'}: {m['text']}" for m in ctx)
        if len(ctx) > 1
        else ctx[0]["text"]
    )


# -- Open Assistant ranked lists (`mrtk data eft`) -------------------------------------------------
def load_ranked_lists(path: Path, lang: str | None) -> tuple[list[dict], dict]:
    """Open Assistant ranked lists, whatever public form they come in: the export's message trees
    (`2023-04-12_oasst_ready.trees.jsonl[.gz]`, one `{message_tree_id, prompt: node}` per line, the
    node schema of Open-Assistant `oasst-data/oasst_data/schemas.py` ExportMessageNode), the
    `OpenAssistant/oasst1` message tables (one flat message per row: `.parquet`, `.jsonl[.gz]`), or the
    simple ranked-list JSONL `mrtk eval judge` reads (`{context, replies: [{text, rank}]}`).

    A list is a prompter message with two or more ranked, undeleted assistant replies; its question is
    the conversation up to it. `lang` (a code such as "en", the default; "all" for every language)
    keeps lists whose prompter message is in that language; the simple form carries no language, so a
    given `lang` is refused there. Returns (lists, counts) with lists as `load_human_pairs` gives them plus `tree_id`."""
    records = list(_records(path))
    if not records:
        raise MrtkError(f"{path} holds no records; give Open Assistant trees, message tables or ranked lists")
    first = records[0]
    if "prompt" in first and isinstance(first["prompt"], dict):
        form, roots = "trees", [_tree(r) for r in records if r.get("prompt")]
    elif "replies" in first and "context" in first:
        form, roots = "ranked lists", None
    elif {"message_id", "parent_id", "role", "text"} <= set(first):
        form, roots = "message table", _rebuild_trees(records)
    else:
        raise MrtkError(
            f"{path}: the first record is not an Open Assistant tree, message row or ranked list "
            "(keys: " + ", ".join(sorted(first)[:8]) + ")"
        )
    if roots is None:
        if lang is not None:
            raise MrtkError(f"--lang {lang}: {path} is a ranked-list file without languages; drop --lang")
        pairs, lists = load_human_pairs(str(path), records)
        if pairs:
            raise MrtkError(f"{path} holds labelled pairs, not ranked lists; give OASST trees or ranked lists")
        lists = [dict(x, tree_id=str(r.get("message_tree_id", x["example_id"]))) for x, r in zip(lists, records)]
        return lists, {"form": form, "records": len(records), "lists": len(lists), "other_language": 0}
    want = None if lang == "all" else (lang or "en")
    lists, other = [], 0
    for root in roots:
        for path_to, node, replies in _ranked_nodes(root, []):
            if want is not None and node.get("lang") != want:
                other += 1
                continue
            lists.append(
                {
                    "example_id": str(node["message_id"]),
                    "tree_id": str(root.get("message_tree_id") or root["message_id"]),
                    "question": _context([{"role": m["role"], "text": m["text"]} for m in path_to + [node]]),
                    "replies": [(r["text"], int(r["rank"])) for r in replies],
                }
            )
    return lists, {"form": form, "records": len(records), "lists": len(lists), "other_language": other}


def _records(path: Path):
    """Objects from a .parquet file (read by DuckDB), or JSON / JSONL, gzipped or not."""
    import gzip

    if not path.is_file():
        raise MrtkError(f"{path} not found; check the path")
    if path.suffix == ".parquet":
        import duckdb

        try:
            rel = duckdb.sql("SELECT * FROM read_parquet(?)", params=[str(path)])
        except duckdb.Error as e:
            raise MrtkError(f"{path} is not a readable parquet file ({str(e).splitlines()[0]})") from None
        cols = rel.columns
        yield from (dict(zip(cols, row)) for row in rel.fetchall())
        return
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as e:
            raise MrtkError(f"{path} is not a readable gzip file ({e})") from None
        yield from read_json_or_jsonl(path, "ranked lists", data)
        return
    yield from read_json_or_jsonl(path, "ranked lists")


def _tree(record: dict) -> dict:
    """An exported tree's root node, carrying the tree id."""
    return dict(record["prompt"], message_tree_id=record.get("message_tree_id"))


def _rebuild_trees(rows: list[dict]) -> list[dict]:
    """Flat message rows -> root nodes with nested `replies`, as the trees export has them."""
    nodes = {str(r["message_id"]): dict(r, replies=[]) for r in rows}
    roots = []
    for node in nodes.values():
        parent = nodes.get(str(node["parent_id"])) if node["parent_id"] is not None else None
        (parent["replies"] if parent else roots).append(node)
    return [r for r in roots if r.get("role") == "prompter"]


def _ranked_nodes(node: dict, path_to: list[dict]):
    """(messages before it, prompter node, its ranked replies best first) for every prompter message
    with two or more ranked, undeleted assistant replies, walking the whole tree."""
    children = [c for c in node.get("replies") or [] if not c.get("deleted")]
    if node.get("role") == "prompter":
        ranked = [c for c in children if c.get("role") == "assistant" and c.get("rank") is not None]
        if len(ranked) >= 2:
            yield path_to, node, sorted(ranked, key=lambda c: c["rank"])
    for child in children:
        yield from _ranked_nodes(child, path_to + [node])
