"""sglang.weight_sync: lora's adapter (mrtk/training/adapters.py): the LoRA of each iteration stacked
into one adapter M1 -> M_{t+1}, exact against the merged models, in a layout PEFT (and so SGLang)
reads back."""

from __future__ import annotations

from pathlib import Path

import torch

from mrtk.training import adapters


def test_the_stacked_adapter_is_the_sum_of_the_merged_iterations(tiny_model_dir, tmp_path):
    """Two iterations of LoRA of different rank and alpha, each merged before the next is trained (as
    the loop does): M1 + the stacked adapter equals M3 weight for weight, and PEFT loads the saved
    adapter onto a fresh M1 and gives M3's logits."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    def m1():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    torch.manual_seed(0)
    model, stack = m1(), None
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for r, alpha in ((4, 8), (2, 7)):
        peft = get_peft_model(
            model, LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj", "down_proj"])
        )
        for name, p in peft.named_parameters():
            if "lora_" in name:  # PEFT starts B at zero: a trained adapter is not
                p.data.normal_(0, 0.2)
        stack = adapters.stacked(stack, adapters.trained(peft, base=tiny_model_dir))
        model = peft.merge_and_unload()
    stack.save(tmp_path / "lora")
    loaded = adapters.LoraStack.load(tmp_path / "lora")
    assert loaded.rank == 6 and loaded.base == tiny_model_dir
    assert loaded.targets() == ["down_proj", "q_proj", "v_proj"]
    final = model.state_dict()
    for module in loaded.tensors:
        key = f"{module}.weight"
        assert (final[key] - start[key]).abs().max() > 1e-3  # the iterations changed it
        torch.testing.assert_close(start[key] + loaded.delta(module), final[key], atol=1e-5, rtol=0)
    served = PeftModel.from_pretrained(m1(), str(tmp_path / "lora"))
    ids = torch.tensor([[1, 17, 230, 4051, 9, 88]])
    with torch.no_grad():
        torch.testing.assert_close(served(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=0)
    assert adapters.adapter_name("M3", tmp_path / "lora") == adapters.adapter_name("M3", tmp_path / "lora")


def test_lora_weight_sync_is_refused_where_it_cannot_apply_and_launches_with_lora():
    """An option that does not apply is refused in one line; a launched server gets --enable-lora with
    room for the largest stacked adapter (train.lora.r x iterations) and the trained modules."""
    import pytest
    from conftest import TINY

    from mrtk.backends.sglang import launch_command
    from mrtk.config import validate_config

    sglang = {"urls": ["http://127.0.0.1:1"], "weight_sync": "lora"}
    for raw, says in (
        ({**TINY, "sglang": sglang}, "applies to backend sglang"),
        (
            {**TINY, "backend": "sglang", "sglang": sglang, "train": {**TINY["train"], "lora": None}},
            "train.lora is null",
        ),
        ({**TINY, "backend": "sglang", "sglang": {**sglang, "urls": ["http://g:1"], "smg": True}}, "dp_size > 1"),
    ):
        with pytest.raises(Exception, match=says):
            validate_config(raw)
    cfg = validate_config(
        {**TINY, "backend": "sglang", "iterations": 3, "sglang": {"launch": True, "weight_sync": "lora"}}
    )
    cmd = launch_command("/m1", cfg.sglang, "M1", (cfg.train.lora.r * cfg.iterations, list(cfg.train.lora.targets)))
    at = cmd.index("--max-lora-rank")
    assert "--enable-lora" in cmd and cmd[at + 1] == str(16 * 3)
    assert cmd[cmd.index("--lora-target-modules") + 1 :][:7] == list(cfg.train.lora.targets)


def test_two_dpo_iterations_save_the_adapter_that_makes_m3_from_m1(tiny_model_dir, tmp_path):
    """The real DPO step with lora_stack (sglang.weight_sync: lora): M2 and M3 each hold `lora/`, M3's of
    rank 2r, and M1 + M3's adapter is M3's merged weights, module by module."""
    from safetensors.torch import load_file
    from test_train import example

    from mrtk.config import LoraCfg, TrainCfg
    from mrtk.training.worker import train_iteration
    from mrtk.ui import QuietUI

    cfg = TrainCfg(
        epochs=[1],
        batch_size=2,
        micro_batch_size=2,
        lr=5e-3,
        gradient_checkpointing=False,
        lora=LoraCfg(r=4, alpha=8, targets=["q_proj", "down_proj"]),
    )
    pairs = [example("a", 3), example("b", 4)]
    model = tiny_model_dir
    for it in (1, 2):
        out = tmp_path / "models" / f"M{it + 1}"
        train_iteration(
            model,
            pairs,
            cfg,
            iteration=it,
            seed=it,
            device="cpu",
            run_dir=tmp_path,
            out=out,
            ui=QuietUI(),
            lora_stack=True,
        )
        model = str(out)
    stack = adapters.LoraStack.load(tmp_path / "models" / "M3" / "lora")
    assert stack.rank == 8 and stack.base == tiny_model_dir
    weights = lambda d: {k: v.float() for f in sorted(d.glob("*.safetensors")) for k, v in load_file(str(f)).items()}  # noqa: E731
    m1, m3 = weights(Path(tiny_model_dir)), weights(tmp_path / "models" / "M3")
    for module in stack.tensors:
        key = f"{module}.weight"
        assert (m3[key] - m1[key]).abs().max() > 0  # DPO moved it
        torch.testing.assert_close(m1[key] + stack.delta(module), m3[key], atol=1e-5, rtol=0)
