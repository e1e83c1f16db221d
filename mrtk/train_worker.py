"""The DPO stage as its own process, for `accelerate launch` on several GPUs.

The loop writes a spec (model, examples, train config, iteration, seed, output paths) and
starts `accelerate launch --num_processes N -m mrtk.train_worker SPEC`; every process trains
on its shard (TRL's DPOTrainer is accelerate-aware), and the main process saves the merged
model and the metrics for the loop to record. One code path with the in-process stage:
`train.train_dpo`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mrtk.config import TrainCfg
from mrtk.errors import MrtkError


def launch_command(spec_path: Path, num_processes: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "--module",
            "mrtk.train_worker", str(spec_path)]


def run_distributed(spec: dict, work_dir: Path, num_processes: int, log_path: Path) -> dict:
    """Write the spec, run the workers, return {"metrics": [...], "stats": {...}} from the main one."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    with open(log_path, "ab") as log:
        res = subprocess.run(launch_command(spec_path, num_processes), stdout=log, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise MrtkError(f"distributed DPO failed (exit {res.returncode}); see {log_path}, then: mrtk run --resume RUN")
    return json.loads(Path(spec["result_path"]).read_text())


def main(spec_path: str) -> None:
    from mrtk.runs import save_model
    from mrtk.stages.train import train_dpo

    spec = json.loads(Path(spec_path).read_text())
    examples = json.loads(Path(spec["examples_path"]).read_text())
    model, tok, metrics, stats = train_dpo(spec["model_dir"], examples, TrainCfg.model_validate(spec["train"]),
                                           iteration=spec["iteration"], seed=spec["seed"], device=spec["device"],
                                           work_dir=Path(spec["work_dir"]))
    if int(os.environ.get("RANK", "0")) == 0:
        save_model(model, tok, Path(spec["out"]))
        Path(spec["result_path"]).write_text(json.dumps({"metrics": metrics, "stats": stats}))


if __name__ == "__main__":
    main(sys.argv[1])
