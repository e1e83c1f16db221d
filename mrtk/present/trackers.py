"""Experiment trackers (`train.report_to`): DPO's curves through TRL/transformers' own
integrations, and the loop's per-iteration numbers beside them, so a researcher sees both in
the tracker they already use. DuckDB stays the record; a tracker only mirrors it.

Run name: the run id. Local files: `RUN/tracker/` (TensorBoard event files under
`tracker/dpo_it<t>/` and `tracker/loop/`; W&B and trackio write their local copies there too).
A tracker whose package is missing is a one-line error naming the pip install, before any work.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mrtk.errors import MrtkError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_installed(report_to: list[str]) -> None:
    for name in report_to:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise MrtkError(
                f"train.report_to names {name}, which is not installed; run: pip install {PACKAGES[name]} (or drop it)"
            )


def loop_metrics(store, it: int) -> dict[str, float]:
    """The loop's numbers for iteration `it`: pairs kept and dropped by reason, the judge's score
    summary (mean, spread, top-score share, unparsed share), the meta-judge's biases."""
    s = store.iteration_numbers(it)
    out: dict[str, float] = {}
    for p in s["pairs"]:
        out[f"pairs/{p['kind']}_{p['status']}/{p['reason']}"] = float(p["n"])
    j, m = s["judgements"], s["meta"]
    named = {
        "judge/score_mean": j["mean_score"],
        "judge/score_sd": j["sd"],
        "judge/score_top": j["top"],
        "judge/score_unparsed": j["unparsed"],
        "meta_judge/first_position_share": m["first_pos"],
        "meta_judge/higher_score_share": m["higher_score_share"],
    }
    out.update({k: float(v) for k, v in named.items() if v is not None})
    return out


def log_loop(report_to: list[str], run_dir: Path, run_name: str, it: int, metrics: dict[str, float]) -> None:
    """Mirror one iteration's loop numbers to every tracker in `report_to` (step = iteration)."""
    local = Path(run_dir) / "tracker"
    local.mkdir(parents=True, exist_ok=True)
    if "tensorboard" in report_to:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(local / "loop")) as w:
            for k, v in metrics.items():
                w.add_scalar(f"loop/{k}", v, it)
    if "wandb" in report_to:
        import wandb

        with wandb.init(project="mrtk", name=run_name, id=f"{run_name}-loop", dir=str(local), resume="allow") as r:
            r.log({f"loop/{k}": v for k, v in metrics.items()} | {"iteration": it})
    if "mlflow" in report_to:
        import mlflow

        with mlflow.start_run(run_name=f"{run_name}-loop"):
            mlflow.log_metrics({f"loop/{k}".replace("/", "."): v for k, v in metrics.items()}, step=it)
    if "trackio" in report_to:
        import trackio

        trackio.init(project="mrtk", name=f"{run_name}-loop", resume="allow")
        trackio.log({f"loop/{k}": v for k, v in metrics.items()}, step=it)
        trackio.finish()
