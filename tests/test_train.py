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
