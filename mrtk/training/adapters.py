"""The LoRA adapter that turns the seed model M1 into M_t, for servers that load adapters at run time
(`sglang.weight_sync: lora`: a few MB per refit instead of the whole model).

Each iteration's DPO trains a rank-r LoRA on M_t and merges it into M_{t+1}, the next DPO's start.
So M_{t+1} = M1 + s_1 B_1 A_1 + ... + s_t B_t A_t exactly, and one adapter of rank r_1 + ... + r_t
holds the sum: A = [A_1; ...; A_t] stacked by rows, B = [s_1 B_1, ..., s_t B_t] by columns, and
lora_alpha equal to its rank (scale 1). It is saved in PEFT's layout (adapter_config.json,
adapter_model.safetensors with `base_model.model.<module>.lora_A.weight` keys), which SGLang's
`/load_lora_adapter` reads, inside the model directory it belongs to (`<model>/lora`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mrtk.errors import MrtkError

LORA_DIR = "lora"
PREFIX = "base_model.model."


@dataclass
class LoraStack:
    """module path (e.g. `model.layers.0.self_attn.q_proj`) -> (A [rank, in], B [out, rank]), fp32,
    each B already multiplied by its adapter's scale; `base` is the model it applies to (M1)."""

    base: str
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def rank(self) -> int:
        return next(iter(self.tensors.values()))[0].shape[0] if self.tensors else 0

    def targets(self) -> list[str]:
        return sorted({m.rsplit(".", 1)[-1] for m in self.tensors})

    def delta(self, module: str) -> torch.Tensor:
        a, b = self.tensors[module]
        return b @ a

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        flat = {}
        for m, (a, b) in self.tensors.items():
            flat[f"{PREFIX}{m}.lora_A.weight"] = a.contiguous()
            flat[f"{PREFIX}{m}.lora_B.weight"] = b.contiguous()
        save_file(flat, str(path / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base,
            "r": self.rank,
            "lora_alpha": self.rank,  # scale 1: the scales are in B
            "lora_dropout": 0.0,
            "target_modules": self.targets(),
            "bias": "none",
            "use_rslora": False,
            "fan_in_fan_out": False,
        }
        (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LoraStack:
        from safetensors.torch import load_file

        config = json.loads((path / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / config["r"]
        flat = load_file(str(path / "adapter_model.safetensors"))
        modules = sorted({k.removeprefix(PREFIX).rsplit(".lora_", 1)[0] for k in flat})
        return cls(
            config["base_model_name_or_path"],
            {
                m: (flat[f"{PREFIX}{m}.lora_A.weight"].float(), scale * flat[f"{PREFIX}{m}.lora_B.weight"].float())
                for m in modules
            },
        )


def trained(peft_model, base: str) -> LoraStack:
    """The LoRA a PEFT model holds (its `default` adapter), before it is merged."""
    out = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a = module.lora_A["default"].weight.detach().float().cpu()
            b = module.lora_B["default"].weight.detach().float().cpu()
            if not a.numel() or not b.numel():
                raise MrtkError(
                    "sglang.weight_sync: lora needs the whole adapter on rank 0, which ZeRO-3 / FSDP sharding does "
                    "not give; use sglang.weight_sync: full with a sharded accelerate config"
                )
            out[name.removeprefix(PREFIX)] = (a.clone(), module.scaling["default"] * b)
    if not out:
        raise MrtkError("sglang.weight_sync: lora needs train.lora (a LoRA to sync); full fine-tuning has none")
    return LoraStack(base, out)


def stacked(previous: LoraStack | None, new: LoraStack) -> LoraStack:
    """`previous` (M1 -> M_t) followed by `new` (M_t -> M_{t+1}): one adapter, M1 -> M_{t+1}."""
    if previous is None:
        return new
    if set(previous.tensors) != set(new.tensors):
        raise MrtkError(
            "train.lora.targets changed between iterations; the stacked adapter needs the same modules each time"
        )
    return LoraStack(
        previous.base,
        {
            m: (torch.cat([pa, new.tensors[m][0]], 0), torch.cat([pb, new.tensors[m][1]], 1))
            for m, (pa, pb) in previous.tensors.items()
        },
    )


def previous_stack(model_dir: str) -> LoraStack | None:
    """M_t's stacked adapter (None for M1, the base the servers hold)."""
    path = Path(model_dir) / LORA_DIR
    return LoraStack.load(path) if path.is_dir() else None


def base_of(path: Path) -> str:
    """The model a saved adapter applies to (M1's directory), from its config alone."""
    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]


def adapter_name(version: str, path: Path) -> str:
    """`<version>-<hash of its weights>`: the name servers know the adapter by, the same for the same
    weights (a resumed run finds it loaded) and different for another run's M<t>."""
    import hashlib

    h = hashlib.sha256()
    with open(path / "adapter_model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{version}-{h.hexdigest()[:12]}"
