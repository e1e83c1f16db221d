"""Pair measurement before DPO: a pair longer than max_length is dropped with its reason, never silently."""

import pytest
from transformers import AutoTokenizer

from mrtk.training.dpo import fit_examples, planned_steps
from mrtk.config import TrainCfg


def example(pair_id, words):
    return {
        "pair_id": pair_id,
        "prompt": [{"role": "user", "content": "Say something."}],
        "chosen": [{"role": "assistant", "content": "word " * words}],
        "rejected": [{"role": "assistant", "content": "short"}],
    }


def test_too_long_pairs_are_dropped_with_reason(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    kept, dropped = fit_examples([example("short", 5), example("long", 400)], tok, max_length=128)
    assert [e["pair_id"] for e in kept] == ["short"]
    assert list(dropped) == ["long"] and dropped["long"].startswith("longer_than_max_length_128_tokens:")
    assert int(dropped["long"].rsplit(":", 1)[1]) > 400


def test_planned_steps():
    # 14 pairs, micro 2 -> 7 micro-batches, accumulate 2 -> 4 steps per epoch, 3 epochs -> 12
    assert planned_steps(14, TrainCfg(batch_size=4, micro_batch_size=2, epochs=[3]), 1) == 12


@pytest.mark.slow
def test_distributed_dpo_worker_trains_saves_and_reports(model_dir, tmp_path):
    """The worker `accelerate launch` runs on every GPU, run here as one plain process on CPU:
    it trains with the same code as the in-process stage, saves the merged model, writes metrics."""
    import json
    import subprocess
    import sys

    from mrtk.training.worker import launch_command

    assert launch_command(tmp_path / "spec.json", TrainCfg(num_processes=4, batch_size=8), "cuda")[1:] == [
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "4",
        "--module",
        "mrtk.training.worker",
        str(tmp_path / "spec.json"),
    ]
    (tmp_path / "ex.json").write_text(json.dumps([example("a", 3), example("b", 4)]))
    spec = {
        "model_dir": model_dir,
        "examples_path": str(tmp_path / "ex.json"),
        "iteration": 1,
        "seed": 0,
        "device": "cpu",
        "train": TrainCfg(epochs=[1], batch_size=2, micro_batch_size=2, trainer="trl").model_dump(mode="json"),
        "work_dir": str(tmp_path / "w"),
        "out": str(tmp_path / "M2"),
        "result_path": str(tmp_path / "result.json"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = subprocess.run(
        [sys.executable, "-m", "mrtk.training.worker", str(tmp_path / "spec.json")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["stats"]["pairs_trained"] == 2 and result["metrics"][0]["loss"] > 0
    assert (tmp_path / "M2" / "config.json").is_file()


def test_global_batch_counts_every_process(tmp_path, monkeypatch):
    """With 2 processes the global batch is still train.batch_size: micro x accumulation x processes,
    read back from the real DPOConfig built as an `accelerate launch` worker sees it (WORLD_SIZE=2)."""
    import pytest
    from trl import DPOConfig

    from mrtk.errors import MrtkError
    from mrtk.training.dpo import trainer_args

    monkeypatch.setenv("WORLD_SIZE", "2")
    kwargs = trainer_args(
        work_dir=tmp_path, micro_batch_size=2, batch_size=32, epochs=1, lr=1e-5, seed=0, device="cpu", bf16=False
    )
    monkeypatch.delenv(
        "WORLD_SIZE"
    )  # a DPOConfig built under WORLD_SIZE=2 would join a process group that is not there
    args = DPOConfig(**kwargs)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 2 == 32
    # 64 pairs over 2 processes: 32 per process, 16 micro-batches each, accumulate 8 -> 2 optimizer steps per epoch
    assert planned_steps(64, TrainCfg(batch_size=32, micro_batch_size=2, num_processes=2, epochs=[1]), 1) == 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MrtkError, match="batch_size 2 is below micro_batch_size x processes = 2 x 2"):
        trainer_args(
            work_dir=tmp_path, micro_batch_size=2, batch_size=2, epochs=1, lr=1e-5, seed=0, device="cpu", bf16=False
        )


def test_batch_size_the_processes_cannot_reach_is_refused():
    import pytest

    from mrtk.config import validate_config
    from mrtk.errors import MrtkError

    with pytest.raises(
        MrtkError, match="train.batch_size 32 is not a multiple of micro_batch_size x num_processes = 2 x 3"
    ):
        validate_config({"train": {"batch_size": 32, "micro_batch_size": 2, "num_processes": 3}})


@pytest.mark.parametrize(
    "trainer", [{"trainer": "trl", "precompute_ref_log_probs": False}, {"trainer": "mrtk"}], ids=["trl", "mrtk"]
)
def test_schedule_spans_more_epochs_than_trained(model_dir, tmp_path, trainer):
    """The paper's schedule: a 10-epoch cosine, the checkpoint taken at epoch 6 (here 3 of 5, the
    same rule in fewer real DPO steps). The learning rates logged in train_metrics are the first
    60% of the longer cosine, not a 3-epoch one decaying to 0: through TRL and through mrtk's own step."""
    import math

    from mrtk.training.dpo import train_dpo

    cfg = TrainCfg(
        epochs=[3],
        schedule_epochs=[5],
        batch_size=2,
        micro_batch_size=2,
        lr=1e-4,
        gradient_checkpointing=False,
        **trainer,
    )
    _, _, metrics, stats = train_dpo(
        model_dir, [example("a", 3), example("b", 4)], cfg, iteration=1, seed=0, device="cpu", work_dir=tmp_path
    )
    assert stats["steps"] == 3 and [m["step"] for m in metrics] == [1, 2, 3]
    # one optimizer step per epoch; HF logs the rate each step used: step k at (k - 1) / 5 of the 5-epoch cosine
    expected = [1e-4 * 0.5 * (1 + math.cos(math.pi * (k - 1) / 5)) for k in range(1, 4)]
    assert [m["learning_rate"] for m in metrics] == [pytest.approx(e, rel=1e-6) for e in expected]
    assert metrics[-1]["learning_rate"] > 0.6e-4  # stopped at 60% of the schedule: 0.655 of lr, not 0


@pytest.mark.slow
def test_two_process_launch_takes_the_same_optimizer_steps(model_dir, tmp_path):
    """A real `accelerate launch --cpu --num_processes 2` (gloo): with the same global batch it
    takes as many optimizer steps over the same pairs as one process (before the fix: half)."""
    import json

    from mrtk.training.worker import launch_command, run_distributed

    (tmp_path / "ex.json").write_text(json.dumps([example(f"p{i}", 3 + i) for i in range(8)]))
    steps = {}
    for procs in (1, 2):
        cfg = TrainCfg(
            epochs=[1],
            batch_size=4,
            micro_batch_size=1,
            num_processes=procs,
            gradient_checkpointing=False,
            trainer="trl",
        )
        w = tmp_path / f"p{procs}"
        spec = {
            "model_dir": model_dir,
            "examples_path": str(tmp_path / "ex.json"),
            "iteration": 1,
            "seed": 0,
            "device": "cpu",
            "train": cfg.model_dump(mode="json"),
            "work_dir": str(w / "work"),
            "out": str(w / "M2"),
            "result_path": str(w / "result.json"),
        }
        result = run_distributed(spec, w, launch_command(w / "spec.json", cfg, "cpu"), w / "train.log")
        steps[procs] = result["stats"]["steps"]
        assert (w / "M2" / "model.safetensors").is_file()
    assert steps == {1: 2, 2: 2}  # 8 pairs / global batch 4 = 2 steps, however many processes share them


def test_smoothed_losses_are_conservative_dpo():
    """The combination handed to TRL, 2(1-e) sigmoid - (1-2e) robust, with TRL's robust loss
    ((1-e)A - eB)/(1-2e), is (1-e)A + eB: conservative DPO (issue 25, train.consistency)."""
    import torch
    import torch.nn.functional as F

    from mrtk.training.dpo import ROBUST_MAX, smoothed_losses

    assert smoothed_losses(["sigmoid"], 0.0) == (["sigmoid"], None, 0.0)
    assert smoothed_losses(["sigmoid", "sft"], 0.5) == (
        ["sigmoid", "robust", "sft"],
        [pytest.approx(1.02), pytest.approx(-0.02), 1.0],
        ROBUST_MAX,
    )
    delta = torch.linspace(-30, 30, 61)
    for eps in (0.1, 0.3, 0.49):
        types, weights, e = smoothed_losses(["sigmoid"], eps)
        a, b = -F.logsigmoid(0.1 * delta), -F.logsigmoid(-0.1 * delta)
        robust = ((1 - e) * a - e * b) / (1 - 2 * e)  # trl/trainer/dpo_trainer.py:1428-1431, as written there
        got = weights[0] * a + weights[1] * robust
        assert torch.allclose(got, (1 - e) * a + e * b, atol=1e-5)


@pytest.mark.slow
def test_label_smoothing_changes_what_dpo_learns(model_dir, tmp_path):
    """TRL 1.16's sigmoid loss ignores `label_smoothing` (a study run trained the same steps with and
    without it); through smoothed_losses the second step's loss differs."""
    from mrtk.training.dpo import train_dpo

    losses = {}
    for eps in (0.0, 0.4):
        cfg = TrainCfg(
            epochs=[1],
            batch_size=1,
            micro_batch_size=1,
            lr=1e-3,
            gradient_checkpointing=False,
            precompute_ref_log_probs=False,
            label_smoothing=eps,
        )
        _, _, metrics, stats = train_dpo(
            model_dir,
            [example("a", 3), example("b", 4)],
            cfg,
            iteration=1,
            seed=0,
            device="cpu",
            work_dir=tmp_path / str(eps),
        )
        losses[eps] = [m["loss"] for m in metrics]
        assert stats["label_smoothing_applied"] == eps
    assert losses[0.0][0] == pytest.approx(losses[0.4][0], abs=1e-4)  # step 1: policy = reference, both log 2
    assert abs(losses[0.0][1] - losses[0.4][1]) > 1e-3, losses


def test_the_temporary_model_trains_beside_the_next_one_not_into_it(tiny_model_dir, tmp_path):
    """pairs.chosen_from: future trains F<t+1> and then M<t+1> in the same iteration: each DPO keeps
    its own work directory and tensorboard log (before, F2's steps went into M2's `dpo_it1`)."""
    from mrtk.training.worker import train_iteration
    from mrtk.ui import QuietUI

    cfg = TrainCfg(
        epochs=[1], batch_size=2, micro_batch_size=2, gradient_checkpointing=False, report_to=["tensorboard"]
    )
    pairs = [example("a", 3), example("b", 4)]
    for name in ("F2", "M2"):
        out = tmp_path / "models" / name
        train_iteration(
            tiny_model_dir, pairs, cfg, iteration=1, seed=0, device="cpu", run_dir=tmp_path, out=out, ui=QuietUI()
        )
        assert (out / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "tracker").iterdir()) == ["dpo_it1", "dpo_it1-F2"]
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["train1", "train1-F2"]
