"""Paper scale on a CPU, in small: full fine-tuning (`train.lora: null`), experiment trackers,
pruning old model versions, the accelerate launch plumbing and `mrtk run --dry-run`.

A tiny random Llama built from SmolLM2's tokenizer stands in for an 8B model (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY, db_of, mrtk, rows


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir) -> str:
    """conftest's 2-layer random Llama with SmolLM2's tokenizer."""
    return tiny_model_dir


@pytest.mark.slow
def test_full_fine_tune_trains_all_weights_and_feeds_the_next_iteration(tiny_model, tmp_path):
    """`train.lora: null`: M2 is a complete model directory with every weight changed and no adapter
    files; iteration 2 generates with it. TensorBoard gets DPO's loss and the loop's numbers;
    runs.keep_models=none-but-final leaves only the newest model."""
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tmp_path / "full.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "model": tiny_model,
                "train": {**TINY["train"], "lora": None, "report_to": ["tensorboard"]},
                "runs": {"keep_models": "none-but-final"},
            }
        )
    )
    mrtk("run", str(cfg), "--quiet", cwd=tmp_path, check=True, timeout=900)
    db = db_of(tmp_path / "runs")
    run = db.parent
    assert rows(db, "SELECT DISTINCT model_version FROM responses WHERE iteration = 2") == [("M2",)]
    assert (
        not (run / "models" / "M2").exists() and (run / "models" / "M3" / "model.safetensors").is_file()
    )  # only the newest kept
    m3 = run / "models" / "M3"
    assert not list(m3.glob("adapter_*")) and (m3 / "config.json").is_file() and (m3 / "tokenizer.json").is_file()
    before, after = load_file(str(Path(tiny_model) / "model.safetensors")), load_file(str(m3 / "model.safetensors"))
    changed = [k for k in before if not (before[k].float() - after[k].float()).abs().max() == 0]
    assert set(changed) == set(before), sorted(set(before) - set(changed))[:5]  # full fine-tuning: every tensor moved
    stats = json.loads(rows(db, "SELECT stats FROM lineage WHERE iteration = 2")[0][0])
    assert stats["steps"] > 0
    dpo = EventAccumulator(str(run / "tracker" / "dpo_it1")).Reload()
    assert "train/loss" in dpo.Tags()["scalars"]
    loop = EventAccumulator(str(run / "tracker" / "loop")).Reload()
    tags = loop.Tags()["scalars"]
    assert "loop/judge/score_mean" in tags and "loop/meta_judge/first_position_share" in tags
    assert [e.step for e in loop.Scalars("loop/judge/score_mean")] == [1, 2]
    kept = rows(db, "SELECT count(*) FROM pairs WHERE iteration = 1 AND kind = 'actor' AND status = 'kept'")[0][0]
    assert loop.Scalars("loop/pairs/actor_kept/ok")[0].value == kept


def test_accelerate_launch_command_and_config_plumbing(tmp_path):
    from mrtk.config import TrainCfg
    from mrtk.training.worker import launch_command

    spec = tmp_path / "spec.json"
    zero3 = Path(__file__).resolve().parents[1] / "experiments" / "accelerate" / "zero3_8gpu.yaml"
    cmd = launch_command(spec, TrainCfg(num_processes=8, batch_size=32, accelerate_config=str(zero3)), "cuda")
    assert cmd[1:] == [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(zero3),
        "--num_processes",
        "8",
        "--module",
        "mrtk.training.worker",
        str(spec),
    ]
    cpu = launch_command(spec, TrainCfg(num_processes=2, batch_size=2, micro_batch_size=1), "cpu")
    assert cpu[3:9] == ["--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision"]
    # every shipped accelerate config is one accelerate itself accepts
    from accelerate.commands.config.config_args import load_config_from_file

    for f in zero3.parent.glob("*.yaml"):
        loaded = load_config_from_file(str(f))
        assert loaded.num_processes >= 2 and loaded.distributed_type.value in ("DEEPSPEED", "FSDP", "MULTI_CPU"), f.name


def test_dry_run_prints_the_paper_plan_without_loading(tmp_path):
    res = mrtk("run", "paper", "--dry-run", cwd=tmp_path, check=True, timeout=120)
    out = res.stdout
    assert "DPO full fine-tuning, 6 epoch(s) of a 10-epoch cosine schedule" in out
    assert (
        "DEEPSPEED ZeRO-3, 8 processes on 1 machine(s)" in out and "--config_file" in out and "--num_processes 8" in out
    )
    assert "sglang.launch_server" in out and "--enable-deterministic-inference" in out and "--dp-size 8" in out
    # the shipped 64-prompt pool is smaller than one iteration's draw: the plan says what is drawn, with one warning line
    assert (
        "iteration 1: 64 prompts;" in out and "meta-judge up to 7040 calls" in out and not (tmp_path / "runs").exists()
    )
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [
        "warning: prompts.file holds 64 prompts, fewer than prompts.per_iteration=5000: each iteration draws all 64 (the paper drew "
        "5,000 of 20,000); set prompts.file to a larger pool"
    ]
    assert "sft:" not in out  # sft.file is null in the preset
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(20000)))
    sft = tmp_path / "eft.jsonl"
    sft.write_text(json.dumps({"prompt": "Rate this.", "completion": "Score: 3"}) + "\n")
    out = mrtk(
        "run",
        "paper",
        "--dry-run",
        "--set",
        f"prompts.file={pool}",
        "--set",
        f"sft.file={sft}",
        cwd=tmp_path,
        check=True,
        timeout=120,
    ).stdout
    assert "iteration 1: 5000 prompts;" in out and "meta-judge up to 550000 calls" in out and "warning" not in out
    assert (
        "sft: 1 examples, 5 epoch(s) of a 10-epoch cosine schedule, lr 5e-08, global batch 32, full fine-tuning -> M1"
        in out
    )


def test_dry_run_names_what_future_guided_chosen_costs(tmp_path):
    """issue 34 item 4: the temporal preset's plan names both halves and, per iteration, the temporary
    DPO, its samples and M_t's judgements of them (default sizes: 6 prompts, K 4, N 3); the switch
    without anchored rejection is refused in one line."""
    out = mrtk("run", "temporal", "--dry-run", cwd=tmp_path, check=True, timeout=120).stdout
    assert "pairs.chosen_from: future (future-guided chosen, Temporal Self-Rewarding arXiv 2508.06026" in out
    for t in (1, 2):
        line = next(x for x in out.splitlines() if x.startswith(f"iteration {t}:"))
        assert (
            f"future-guided chosen: a temporary DPO on up to 6 anchored pairs, 24 samples from it + 72 judgements by M{t}"
            in line
        )
    res = mrtk("run", "--dry-run", "--set", "pairs.chosen_from=future", cwd=tmp_path, timeout=120)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert "pairs.chosen_from: future trains its temporary model on the anchored pairs" in res.stderr


def test_dry_run_disk_estimate_from_a_local_model(tiny_model, tmp_path):
    res = mrtk(
        "run", "--dry-run", "--set", f"model={tiny_model}", "--set", "runs.keep_models=last", cwd=tmp_path, check=True
    )
    assert "GB per model version" in res.stdout and "2 kept (runs.keep_models: last)" in res.stdout


def test_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from mrtk.errors import MrtkError
    from mrtk.present.trackers import check_installed

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(MrtkError, match="train.report_to names wandb, which is not installed; run: pip install wandb"):
        check_installed(["wandb"])
