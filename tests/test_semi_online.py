"""train.sync_every_steps (issue 33 item 5): an iteration in segments, each generated, judged and paired
by the policy as it stands, then trained on with mrtk's own DPO step (real, on the tiny random model),
the policy synced before the next segment. The generation is the scripted policy's (its texts are a
function of the model directory, so a synced policy writes other texts) or the SGLang path against
simulated servers; training is real in both."""

from __future__ import annotations

import pytest
import yaml
from conftest import TINY, db_of, rows, snapshot
from scripted import Crash, ScriptedPolicy

from mrtk.config import validate_config
from mrtk.inputs import check_inputs
from mrtk.loop import Loop
from mrtk.runs import new_run
from mrtk.store import RunStore
from mrtk.training.worker import train_iteration

SEGMENTS = 3  # 6 prompts, S x batch_size = 1 x 2 prompts a segment


def semi_online(model: str, **more) -> dict:
    return {
        **TINY,
        "model": model,
        "iterations": 1,
        "prompts": {"per_iteration": 2 * SEGMENTS},
        "runtime": {"max_batch_rows": 1},
        "pairs": {**TINY["pairs"], "judge_iterations": [1]},
        "train": {
            **TINY["train"],
            "sync_every_steps": 1,
            "lr": 1e-3,
            "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
        },
        **more,
    }


def run(tmp_path, raw: dict, policy=None, store: RunStore | None = None) -> RunStore:
    from mrtk.backends import open_policy

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    inputs = check_inputs(validate_config(raw), tmp_path)
    store = store or new_run(inputs.cfg, str(tmp_path / "cfg.yaml"), tmp_path / "runs")
    Loop(store, inputs, open_policy=policy.opener if policy else open_policy, train=train_iteration).run()
    return store


def versions(db, table: str) -> dict[str, set]:
    """prompt id -> the model versions of its rows in `table`."""
    out: dict[str, set] = {}
    for pid, v in rows(db, f"SELECT prompt_id, model_version FROM {table}"):
        out.setdefault(pid, set()).add(v)
    return out


def check_versions(db) -> None:
    """Rows of segment j (prompts in id order, 2 a segment) carry M1, M1.1, M1.2: the policy after j syncs."""
    prompts = [p for (p,) in rows(db, "SELECT prompt_id FROM prompts ORDER BY prompt_id")]
    expected = {p: {"M1" if i // 2 == 0 else f"M1.{i // 2}"} for i, p in enumerate(prompts)}
    assert versions(db, "responses") == expected
    assert versions(db, "judgements") == expected
    fought = versions(db, "meta_judgements")
    assert fought and all(fought[p] == expected[p] for p in fought)


def test_rows_made_after_each_sync_carry_the_new_version(tmp_path, tiny_model_dir):
    store = run(tmp_path, semi_online(tiny_model_dir), ScriptedPolicy())
    db = store.run_dir / "mrtk.duckdb"
    check_versions(db)
    stages = dict(rows(db, "SELECT stage, status FROM stages"))
    for j in range(SEGMENTS):
        assert stages[f"actor s{j}"] == stages[f"train s{j}"] == stages[f"pairs s{j}"] == "done"
    assert stages["train"] == "done"
    # one optimizer run over the segments: steps numbered on, one per batch_size of each segment's kept pairs
    per_segment = rows(
        db,
        """SELECT (SELECT count(*) FROM prompts q WHERE q.prompt_id < p.prompt_id) // 2 AS seg, count(*)
           FROM pairs p WHERE status = 'kept' GROUP BY 1 ORDER BY 1""",
    )
    steps = [s for (s,) in rows(db, "SELECT step FROM train_metrics ORDER BY step")]
    assert steps == list(range(1, sum(-(-n // 2) for _, n in per_segment) + 1)) and len(steps) >= SEGMENTS
    assert [e for (e,) in rows(db, "SELECT DISTINCT epoch FROM train_metrics ORDER BY 1")] == [0.0, 1.0, 2.0]
    [(pairs_trained, stats)] = rows(db, "SELECT pairs_trained, stats->>'trainer' FROM lineage")
    assert pairs_trained == sum(n for _, n in per_segment) and stats == "mrtk"
    models = store.run_dir / "models"
    assert (models / "M2" / "config.json").is_file()
    assert not (models / "M1.1").exists() and not (models / "M1.2").exists()  # syncs go once M2 is saved


def test_end_to_end_on_the_embedded_backend(tmp_path, tiny_model_dir):
    """The embedded backend generates each segment with the synced policy it loads from models/M1.<j>."""
    store = run(tmp_path, semi_online(tiny_model_dir))
    db = store.run_dir / "mrtk.duckdb"
    check_versions(db)
    assert rows(db, "SELECT status FROM runs") == [("success",)]
    assert rows(db, "SELECT count(*) > 0 FROM train_metrics WHERE loss IS NOT NULL") == [(True,)]


def test_a_crash_in_a_later_segment_resumes_to_the_uninterrupted_run(tmp_path, tiny_model_dir):
    """Killed while the third segment generates (after two trained segments and two syncs), then resumed:
    the training state comes back from the last sync, and every table equals the uninterrupted run's,
    train_metrics' losses included."""
    raw = semi_online(tiny_model_dir)
    whole = run(tmp_path / "whole", raw, ScriptedPolicy())
    per_segment = whole.fetch("SELECT count(*) AS c FROM responses")[0]["c"] // SEGMENTS
    policy = ScriptedPolicy(crash_after=2 * per_segment * 4 + 1)  # into the 3rd segment's generation
    with pytest.raises(Exception) as e:
        run(tmp_path / "cut", raw, policy)
    assert isinstance(e.value, Crash) or "scripted crash" in str(e.value)
    db = db_of(tmp_path / "cut" / "runs")
    assert rows(db, "SELECT count(*) FROM lineage") == [(0,)]
    assert (db.parent / "models" / "M1.2").is_dir()  # the second sync, which the resume goes on from
    run(tmp_path / "cut", raw, ScriptedPolicy(), store=RunStore(db.parent))
    assert snapshot(db) == snapshot(whole.run_dir / "mrtk.duckdb")
    check_versions(db)


def test_the_sglang_path_syncs_each_segment_and_rows_name_it(tmp_path, tiny_model_dir):
    """Against simulated SGLang servers: each sync is a weight update the servers hold before the next
    segment's requests (checked on every answer), and the rows name the version that made them."""
    from mrtk.bench.serving_sim import LatencyModel, SimServer

    with SimServer(LatencyModel(slots=4, step_s=0.002)) as sim:
        raw = semi_online(tiny_model_dir, backend="sglang", sglang={"urls": [sim.url], "retries": 1})
        store = run(tmp_path, raw)
        updates = [body["weight_version"] for path, body in sim.log if path == "/update_weights_from_disk"]
    check_versions(store.run_dir / "mrtk.duckdb")
    assert updates == ["M1", "M1.1", "M1.2"]  # M1 first: the simulated server starts on another model ("sim")


def test_with_lora_weight_sync_each_sync_is_an_adapter_not_a_model(tmp_path, tiny_model_dir):
    """sglang.weight_sync: lora: the servers keep M1 and each sync loads the adapter M1 -> M1.<j> saved in
    the sync's directory; no model is loaded from disk, and each segment's requests name its adapter."""
    from pathlib import Path

    from mrtk.bench.serving_sim import LatencyModel, SimServer

    with SimServer(LatencyModel(slots=4, step_s=0.002), enable_lora=True, model_path=tiny_model_dir) as sim:
        raw = semi_online(
            tiny_model_dir, backend="sglang", sglang={"urls": [sim.url], "retries": 1, "weight_sync": "lora"}
        )
        store = run(tmp_path, raw)
        loads = [(b["lora_name"], Path(b["lora_path"])) for p, b in sim.log if p == "/load_lora_adapter"]
        refits = [p for p, _ in sim.log if p == "/update_weights_from_disk"]
        named = set(sim.lora_samples)
    check_versions(store.run_dir / "mrtk.duckdb")
    assert refits == []
    assert [name.split("-")[0] for name, _ in loads] == ["M1.1", "M1.2"], loads
    assert [path.parent.name for _, path in loads] == ["M1.1", "M1.2"]
    assert named == {None, *(name for name, _ in loads)}
    assert (store.run_dir / "models" / "M2" / "lora").is_dir()  # M2's adapter, for the next iteration's servers
