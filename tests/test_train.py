"""Pair measurement before DPO: a pair longer than max_length is dropped with its reason, never silently."""

from transformers import AutoTokenizer

from mrtk.stages.train import fit_examples, planned_steps
from mrtk.config import TrainCfg


def example(pair_id, words):
    return {"pair_id": pair_id, "prompt": [{"role": "user", "content": "Say something."}],
            "chosen": [{"role": "assistant", "content": "word " * words}],
            "rejected": [{"role": "assistant", "content": "short"}]}


def test_too_long_pairs_are_dropped_with_reason(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    kept, dropped = fit_examples([example("short", 5), example("long", 400)], tok, max_length=128)
    assert [e["pair_id"] for e in kept] == ["short"]
    assert list(dropped) == ["long"] and dropped["long"].startswith("longer_than_max_length_128_tokens:")
    assert int(dropped["long"].rsplit(":", 1)[1]) > 400


def test_planned_steps():
    # 14 pairs, micro 2 -> 7 micro-batches, accumulate 2 -> 4 steps per epoch, 3 epochs -> 12
    assert planned_steps(14, TrainCfg(batch_size=4, micro_batch_size=2, epochs=[3]), 1) == 12


def test_distributed_dpo_worker_trains_saves_and_reports(model_dir, tmp_path):
    """The worker `accelerate launch` runs on every GPU, run here as one plain process on CPU:
    it trains with the same code as the in-process stage, saves the merged model, writes metrics."""
    import json
    import subprocess
    import sys

    from mrtk.train_worker import launch_command

    assert launch_command(tmp_path / "spec.json", 4)[1:] == ["-m", "accelerate.commands.launch", "--num_processes", "4",
                                                            "--module", "mrtk.train_worker", str(tmp_path / "spec.json")]
    (tmp_path / "ex.json").write_text(json.dumps([example("a", 3), example("b", 4)]))
    spec = {"model_dir": model_dir, "examples_path": str(tmp_path / "ex.json"), "iteration": 1, "seed": 0, "device": "cpu",
            "train": TrainCfg(epochs=[1], batch_size=2, micro_batch_size=2).model_dump(mode="json"),
            "work_dir": str(tmp_path / "w"), "out": str(tmp_path / "M2"), "result_path": str(tmp_path / "result.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = subprocess.run([sys.executable, "-m", "mrtk.train_worker", str(tmp_path / "spec.json")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["stats"]["pairs_trained"] == 2 and result["metrics"][0]["loss"] > 0
    assert (tmp_path / "M2" / "config.json").is_file()
