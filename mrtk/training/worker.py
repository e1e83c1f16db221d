"""The DPO stage as its own process, for `accelerate launch` on several GPUs.

The loop writes a spec (model, examples, train config, iteration, seed, output paths) and
starts `accelerate launch [--config_file FILE] [--num_processes N] -m mrtk.training.worker SPEC`;
every process trains on its shard (TRL's DPOTrainer is accelerate-aware). Unsharded, the main
process saves the merged model; under DeepSpeed ZeRO-3 or FSDP every rank takes part in
`trainer.save_model`, which gathers the shards into one consolidated model directory (the
form SGLang's `/update_weights_from_disk` loads). One code path with the in-process stage:
`train.train_dpo`. `train_iteration` is what the loop calls: it picks one of the two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mrtk.config import TrainCfg
from mrtk.errors import MrtkError


def launch_command(spec_path: Path, cfg: TrainCfg, device: str = "cuda") -> list[str]:
    """`accelerate launch` for the DPO stage: the user's accelerate config file (DeepSpeed ZeRO,
    FSDP, several machines) when `train.accelerate_config` names one, with `train.num_processes`
    as the process count when it is above 1; on CPU, accelerate's MULTI_CPU (gloo)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config:
        cmd += ["--config_file", str(Path(cfg.accelerate_config).expanduser().resolve())]
    if cfg.num_processes > 1 or not cfg.accelerate_config:
        cmd += ["--num_processes", str(cfg.num_processes)]
    if device == "cpu" and not cfg.accelerate_config:
        cmd += ["--cpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + ["--module", "mrtk.training.worker", str(spec_path)]


def run_distributed(spec: dict, work_dir: Path, cmd: list[str], log_path: Path) -> dict:
    """Write the spec, run the workers, return {"metrics": [...], "stats": {...}} from the main one."""
    work_dir.mkdir(parents=True, exist_ok=True)
    Path(cmd[-1]).write_text(json.dumps(spec))
    with open(log_path, "ab") as log:
        res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise MrtkError(f"distributed DPO failed (exit {res.returncode}); see {log_path}, then: mrtk run --resume RUN")
    return json.loads(Path(spec["result_path"]).read_text())


def train_iteration(
    model_dir: str,
    fitted: list[dict],
    cfg: TrainCfg,
    *,
    iteration: int,
    seed: int,
    device: str,
    run_dir: Path,
    out: Path,
    ui,
    lora_stack: bool = False,
) -> tuple[list[dict], dict]:
    """DPO for one iteration, M_t -> M_{t+1} saved at `out`: in this process, or under
    `accelerate launch` when `train.num_processes` > 1 or `train.accelerate_config` names a
    config (the workers save the model). `lora_stack`: the adapter M1 -> M_{t+1} is saved in the
    model directory too (`<out>/lora`, sglang.weight_sync: lora). Returns (per-step metrics, stats)."""
    from mrtk.hardware import release_memory
    from mrtk.models import save_model
    from mrtk.training import dpo as train

    # the temporary next model (pairs.chosen_from: future, F<t+1>) trains beside M<t+1>: its own work and tracker names
    tag = "" if out.name.startswith("M") else f"-{out.name}"
    work = run_dir / "tmp" / f"train{iteration}{tag}"
    tracker_dir = run_dir / "tracker"
    if cfg.launched:
        (work / "examples.json").parent.mkdir(parents=True, exist_ok=True)
        (work / "examples.json").write_text(json.dumps(fitted))
        cmd = launch_command(work / "spec.json", cfg, device)
        ui.info(f"it{iteration} train{tag}: accelerate launch {' '.join(cmd[3:])}  (log: {run_dir / 'train.log'})")
        result = run_distributed(
            {
                "model_dir": model_dir,
                "examples_path": str(work / "examples.json"),
                "train": cfg.model_dump(mode="json"),
                "iteration": iteration,
                "seed": seed,
                "device": device,
                "work_dir": str(work),
                "out": str(out),
                "run_name": run_dir.name,
                "tag": tag,
                "tracker_dir": str(tracker_dir),
                "result_path": str(work / "result.json"),
                "lora_stack": lora_stack,
            },
            work,
            cmd,
            run_dir / "train.log",
        )
        return result["metrics"], result["stats"]
    with ui.stage(
        f"it{iteration} train{tag} ({len(fitted)} pairs)", train.planned_steps(len(fitted), cfg, iteration)
    ) as go:
        model, tok, metrics, stats = train.train_dpo(
            model_dir,
            fitted,
            cfg,
            iteration=iteration,
            seed=seed,
            device=device,
            work_dir=work,
            on_step=lambda: go(1),
            run_name=run_dir.name,
            tracker_dir=tracker_dir,
            tag=tag,
            lora_to=work / "lora" if lora_stack else None,
        )
    save_model(model, tok, out, extra={"lora": work / "lora"} if lora_stack else None)
    del model
    release_memory()  # before a server takes its GPU memory back
    return metrics, stats


def main(spec_path: str) -> None:
    from mrtk.models import save_model
    from mrtk.training.dpo import train_dpo

    spec = json.loads(Path(spec_path).read_text())
    examples = json.loads(Path(spec["examples_path"]).read_text())
    model, tok, metrics, stats = train_dpo(
        spec["model_dir"],
        examples,
        TrainCfg.model_validate(spec["train"]),
        iteration=spec["iteration"],
        seed=spec["seed"],
        device=spec["device"],
        work_dir=Path(spec["work_dir"]),
        run_name=spec.get("run_name"),
        tag=spec.get("tag", ""),
        tracker_dir=Path(spec["tracker_dir"]) if spec.get("tracker_dir") else None,
        sharded_save_to=Path(spec["out"]) if sharded() else None,
        lora_to=Path(spec["work_dir"]) / "lora" if spec.get("lora_stack") else None,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        if not sharded():  # a sharded run saved the consolidated model inside train_dpo, every rank taking part
            lora = {"lora": Path(spec["work_dir"]) / "lora"} if spec.get("lora_stack") else None
            save_model(model, tok, Path(spec["out"]), extra=lora)
        Path(spec["result_path"]).write_text(json.dumps({"metrics": metrics, "stats": stats}))


def sharded() -> bool:
    """DeepSpeed ZeRO or FSDP under `accelerate launch`: no rank holds the whole model."""
    return (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
        or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    )


if __name__ == "__main__":
    main(sys.argv[1])
