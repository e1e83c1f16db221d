"""`mrtk data eft`: the keep rule by hand, the three Open Assistant forms read alike, and the command
end to end on the tiny model (every judgement a row; the file agrees with the rows; SFT reads it)."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest
from conftest import mrtk

from mrtk.data import load_ranked_lists
from mrtk.eft import _sample, agrees, cap_per_score, nearest
from mrtk.errors import MrtkError
from mrtk.rows import format_score
from mrtk.training.sft import load_sft_examples
from mrtk.store.db import DB_NAME

REPO = Path(__file__).resolve().parents[1]


def test_keep_rule_by_hand():
    assert agrees([0, 1, 2], [3.0, 2.0, 1.0])
    assert not agrees([0, 1, 2], [3.0, 3.0, 1.0])  # an equal mean where the humans ranked apart: dropped
    assert not agrees([0, 1, 2], [3.0, 1.0, 2.0])  # answers 2 and 3 swapped
    assert not agrees([0, 1], [3.0, None])  # an answer with no parsed score
    assert agrees([0, 0, 1], [1.0, 2.0, 0.5])  # equal human ranks may score anything
    assert not agrees([1, 0], [3.0, 2.0])  # ranks, not positions, decide


def test_nearest_judgement_and_the_cap():
    js = [{"score": 1.0, "id": "a"}, {"score": 3.0, "id": "b"}, {"score": None, "id": "c"}, {"score": 4.0, "id": "d"}]
    assert nearest(js, 8 / 3)["id"] == "b"
    assert nearest([{"score": 2.0, "id": "x"}, {"score": 4.0, "id": "y"}], 3.0)["id"] == "x"  # a tie: the first
    # "first" is the sample order, which item ids (.../j10 before .../j2 as strings) do not give
    ids = ["eft/0/J/l#0/k/j10", "eft/0/J/l#0/k/j2", "eft/0/J/l#0/k/j0"]
    assert [i["item_id"][-3:] for i in sorted(({"item_id": i} for i in ids), key=_sample)] == ["/j0", "/j2", "j10"]
    examples = [{"score": s} for s in (4, 4, 4, 4, 2, 3.4, 1)]
    kept, dropped = cap_per_score(examples, 2, seed=1)
    assert dropped == 2 and sorted(round(e["score"]) for e in kept) == [1, 2, 3, 4, 4]
    assert cap_per_score(examples, 2, seed=1) == (kept, dropped)  # seeded
    assert cap_per_score(examples, None, seed=1) == (examples, 0)


def _node(mid, role, text, *, lang="en", rank=None, deleted=False, replies=()):
    return {
        "message_id": mid,
        "parent_id": None,
        "text": text,
        "role": role,
        "lang": lang,
        "rank": rank,
        "deleted": deleted,
        "synthetic": False,
        "replies": list(replies),
    }


def _trees() -> list[dict]:
    """Two exported trees (ExportMessageTree / ExportMessageNode): an English one with a ranked first
    turn (a deleted and an unranked reply among them) and a ranked second turn, and a German one."""
    second = _node(
        "p2",
        "prompter",
        "And in winter?",
        replies=[_node("c1", "assistant", "Wear wool.", rank=1), _node("c0", "assistant", "Layers.", rank=0)],
    )
    en = _node(
        "p1",
        "prompter",
        "What should I wear hiking?",
        replies=[
            _node("a0", "assistant", "Boots and a hat.", rank=0, replies=[second]),
            _node("a1", "assistant", "Anything.", rank=1),
            _node("a2", "assistant", "Deleted answer.", rank=2, deleted=True),
            _node("a3", "assistant", "Unranked answer."),
        ],
    )
    de = _node(
        "q1",
        "prompter",
        "Was soll ich anziehen?",
        lang="de",
        replies=[
            _node("b0", "assistant", "Stiefel.", lang="de", rank=0),
            _node("b1", "assistant", "Egal.", lang="de", rank=1),
        ],
    )
    return [
        {"message_tree_id": "t-en", "tree_state": "ready_for_export", "prompt": en},
        {"message_tree_id": "t-de", "prompt": de},
    ]


def _flat(trees: list[dict]) -> list[dict]:
    """The same messages as oasst1's message table: one row per message, parent ids, no nesting."""
    rows = []

    def walk(node, parent, tree):
        rows.append({k: v for k, v in node.items() if k != "replies"} | {"parent_id": parent, "message_tree_id": tree})
        for c in node["replies"]:
            walk(c, node["message_id"], tree)

    for t in trees:
        walk(t["prompt"], None, t["message_tree_id"])
    return rows


def test_trees_and_message_tables_give_the_same_lists(tmp_path):
    trees = tmp_path / "2023-04-12_oasst_ready.trees.jsonl.gz"
    trees.write_bytes(gzip.compress("".join(json.dumps(t) + "\n" for t in _trees()).encode()))
    lists, counts = load_ranked_lists(trees, None)
    assert counts == {"form": "trees", "records": 2, "lists": 2, "other_language": 1}
    first, second = sorted(lists, key=lambda x: x["example_id"])
    assert first["replies"] == [("Boots and a hat.", 0), ("Anything.", 1)]  # deleted and unranked left out
    assert first["question"] == "What should I wear hiking?" and first["tree_id"] == "t-en"
    assert second["replies"] == [("Layers.", 0), ("Wear wool.", 1)]  # best first
    assert (
        second["question"] == "User: What should I wear hiking?\n\nAssistant: Boots and a hat.\n\nUser: And in winter?"
    )
    assert len(load_ranked_lists(trees, "all")[0]) == 3 and len(load_ranked_lists(trees, "de")[0]) == 1

    rows = _flat(_trees())
    table = tmp_path / "oasst1.jsonl.gz"
    table.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    parquet = tmp_path / "train-00000-of-00001.parquet"
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    duckdb.sql(
        f"COPY (SELECT * FROM read_json('{tmp_path / 'rows.json'}')) TO '{parquet}' (FORMAT parquet)"
    )  # rank a nullable column, as in oasst1
    for path in (table, parquet):
        got, c = load_ranked_lists(path, None)
        assert c["form"] == "message table" and c["other_language"] == 1
        assert sorted((x["example_id"], x["question"], x["replies"]) for x in got) == sorted(
            (x["example_id"], x["question"], x["replies"]) for x in lists
        )


def test_ranked_list_files_and_refusals(tmp_path):
    sample = REPO / "data" / "oasst_ranked_sample.jsonl"
    lists, counts = load_ranked_lists(sample, None)
    assert counts["form"] == "ranked lists" and len(lists) == 7 and all(len(x["replies"]) >= 2 for x in lists)
    with pytest.raises(MrtkError, match="without languages; drop --lang"):
        load_ranked_lists(sample, "en")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"input": "q", "output_1": "a", "output_2": "b", "label": 1}) + "\n")
    with pytest.raises(MrtkError, match="not an Open Assistant tree"):
        load_ranked_lists(pairs, None)


def eft_on_the_sample(cwd: Path, model: str, *args: str):
    """`mrtk data eft` on the shipped sample with the tiny model, writing eft.jsonl in `cwd`."""
    return mrtk(
        "data", "eft", "oasst_ranked_sample.jsonl", "-o", "eft.jsonl", "--set", f"model={model}", *args, cwd=cwd
    )


def test_eft_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir):
    """Every judgement is an eval_items row with its raw text; the file holds exactly the lists whose
    stored mean scores agree with the human ranks (recomputed here from the rows), each answer's
    completion is one of its own judgements, and the SFT stage reads the file."""
    res = eft_on_the_sample(tmp_path, tiny_model_dir, "--n", "2", "--set", "judge.max_new_tokens=8")
    assert res.returncode == 0, res.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    with duckdb.connect(str(run_dir / DB_NAME), read_only=True) as db:
        items = db.execute(
            "SELECT example_id, slot, score, raw_text, item_id FROM eval_items WHERE eval = 'eft'"
        ).fetchall()
        kept_share = db.execute("SELECT value, n FROM eval_results WHERE eval = 'eft:kept'").fetchone()
    replies = sum(len(x["replies"]) for x in load_ranked_lists(REPO / "data" / "oasst_ranked_sample.jsonl", None)[0])
    assert len(items) == 2 * replies and all(raw for *_, raw, _ in items)
    scores = defaultdict(list)
    for _, slot, score, _, _ in items:
        if score is not None:
            scores[slot].append(score)
    agreeing = set()
    for x in load_ranked_lists(REPO / "data" / "oasst_ranked_sample.jsonl", None)[0]:
        means = [
            sum(scores[f"{x['example_id']}#{k}"]) / len(scores[f"{x['example_id']}#{k}"])
            if scores[f"{x['example_id']}#{k}"]
            else None
            for k in range(len(x["replies"]))
        ]
        ranks = [r for _, r in x["replies"]]
        if all(
            means[i] is not None and means[j] is not None and means[i] > means[j]
            for i in range(len(ranks))
            for j in range(len(ranks))
            if ranks[i] < ranks[j]
        ):
            agreeing.add(x["example_id"])
    examples = [json.loads(line) for line in (tmp_path / "eft.jsonl").read_text().splitlines()]
    assert {e["list_id"] for e in examples} == agreeing
    assert kept_share == (len(agreeing) / 7, 7)
    raw = {item_id: text for *_, text, item_id in items}
    for e in examples:  # structured mode: the sampled justification, then the expected score as the loop writes it
        assert e["completion"] == raw[e["judgement_id"]] + format_score(e["score"])
    stats = json.loads((tmp_path / "eft.jsonl.stats.json").read_text())
    assert stats["kept_lists"] == len(agreeing) and stats["examples"] == len(examples)
    if examples:
        assert len(load_sft_examples(tmp_path / "eft.jsonl")) == len(examples)
    assert "next: mrtk run --set sft.file=eft.jsonl" in res.stdout
    # again with that run's seed model (--run): every judgement is stored, so nothing is judged again
    again = mrtk(
        "data", "eft", "oasst_ranked_sample.jsonl", "-o", "again.jsonl", "--n", "2", "--run", str(run_dir), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "eft.jsonl").read_text()
    with duckdb.connect(str(run_dir / DB_NAME), read_only=True) as db:
        assert db.execute("SELECT count(*) FROM eval_items WHERE eval = 'eft'").fetchone()[0] == len(items)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--run", "x", "--config", "default"], "drop --config, --set and --runs"),
        (["--iteration", "1"], "give --run too"),
        (["--cap-per-score", "0"], "--cap-per-score 0"),
        (["--lang", "en"], "drop --lang"),
        (["--set", "sft.file=eft.jsonl"], "drop sft.file"),
        (["--template", "judge_pairwise"], "needs a pointwise judge template"),
    ],
)
def test_bad_eft_options_are_one_line(tmp_path, tiny_model_dir, args, says):
    res = eft_on_the_sample(tmp_path, tiny_model_dir, *args)
    assert res.returncode != 0 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "eft.jsonl").exists()
