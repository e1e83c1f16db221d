"""The optional SFT (EFT) stage before iteration 1, on the real embedded model."""

from __future__ import annotations

import json

import duckdb
import pytest
import yaml

from conftest import TINY, mrtk
from mrtk.errors import MrtkError
from mrtk.training.sft import load_sft_examples

EXAMPLES = [
    {"prompt": "Rate this answer to 'What is 2+2?': '4'.", "completion": "The answer is correct and direct.\nScore: 5"},
    {"prompt": "Rate this answer to 'Capital of France?': 'Berlin'.", "completion": "The answer is wrong.\nScore: 0"},
    {
        "prompt": "Rate this answer to 'Name a colour': 'Blue'.",
        "completion": "Relevant and correct, but terse.\nScore: 3",
    },
    {
        "prompt": "Rate this answer to 'Why is the sky blue?': 'Rayleigh scattering.'",
        "completion": "Correct but brief.\nScore: 3",
    },
]


@pytest.mark.slow
def test_sft_then_iteration_uses_its_model(tmp_path, model_dir):
    data = tmp_path / "eft.jsonl"
    data.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    cfg = {
        **TINY,
        "iterations": 1,
        "pairs": {"judge_iterations": [], "rho": [0.0]},
        "sft": {"file": str(data), "epochs": 1, "batch_size": 2, "micro_batch_size": 2},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    mrtk("run", str(path), "--quiet", cwd=tmp_path, check=True, timeout=900)
    [db] = list(tmp_path.glob("runs/*/mrtk.duckdb"))
    con = duckdb.connect(str(db), read_only=True)
    lineage = con.execute(
        "SELECT iteration, base_model, output_model, pairs_trained FROM lineage ORDER BY 1"
    ).fetchall()
    sft_steps = con.execute(
        "SELECT count(*), bool_and(loss IS NOT NULL) FROM train_metrics WHERE iteration = 0"
    ).fetchall()
    con.close()
    assert [row[0] for row in lineage] == [0, 1]
    assert lineage[0][3] == len(EXAMPLES)
    assert lineage[0][2] == "models/M1" and lineage[1][1] == "models/M1"  # iteration 1 starts from the SFT model
    assert sft_steps == [(2, True)]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a"}\n', "needs non-empty string fields"),
        ("not json\n", "line 1 is not valid JSON"),
        ("", "holds no examples"),
    ],
)
def test_bad_sft_files(tmp_path, content, message):
    p = tmp_path / "s.jsonl"
    p.write_text(content)
    with pytest.raises(MrtkError, match=message):
        load_sft_examples(p)


def test_sft_schedule_spans_more_epochs_than_trained(model_dir, tmp_path):
    """The paper's EFT step (appendix A.3): a 10-epoch cosine with the checkpoint at epoch 5. Here
    2 of a 4-epoch cosine: training stops after 2 epochs, with the rates of the first half of the
    longer schedule (not a 2-epoch cosine decaying to 0)."""
    import math

    from mrtk.config import SftCfg
    from mrtk.training.sft import train_sft

    cfg = SftCfg(epochs=2, schedule_epochs=4, batch_size=4, micro_batch_size=4, lr=1e-4)
    examples = [
        {
            "prompt": [{"role": "user", "content": e["prompt"]}],
            "completion": [{"role": "assistant", "content": e["completion"]}],
        }
        for e in EXAMPLES
    ]
    _, _, metrics, stats = train_sft(model_dir, examples, cfg, seed=0, device="cpu", work_dir=tmp_path)
    assert stats["steps"] == 2 and [m["step"] for m in metrics] == [1, 2]
    expected = [1e-4 * 0.5 * (1 + math.cos(math.pi * (k - 1) / 4)) for k in (1, 2)]
    assert [m["learning_rate"] for m in metrics] == [pytest.approx(e, rel=1e-6) for e in expected]
