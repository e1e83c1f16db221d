"""`mrtk run --dry-run`: what a run would do, checked and printed, with no model loaded.

The config is validated and resolved (templates, data files, accelerate config) exactly as a
real run does; then the plan per iteration (model calls per stage, pairs, DPO schedule), the
commands that would be launched (the SGLang server, `accelerate launch`) and the disk each
model version takes (from the model's config.json when it is local or in the Hugging Face
cache; a hub id offline gives no size).
"""

from __future__ import annotations

import json
from pathlib import Path

from mrtk.backends import serving_plan
from mrtk.config import at
from mrtk.inputs import Inputs, pool_warning


def model_bytes(spec: str) -> int | None:
    """Bytes of one saved model version (fp32, as training saves it), from config.json."""
    config = None
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json")
            if isinstance(cached, str):
                config = json.loads(Path(cached).read_text(encoding="utf-8"))
        except Exception:  # no hub cache, or an id that is not one: size unknown
            config = None
    if not config:
        return None
    h, layers, vocab = config.get("hidden_size"), config.get("num_hidden_layers"), config.get("vocab_size")
    inter = config.get("intermediate_size") or 4 * (h or 0)
    if not (h and layers and vocab):
        return None
    heads, kv = (
        config.get("num_attention_heads") or 1,
        config.get("num_key_value_heads") or config.get("num_attention_heads") or 1,
    )
    attn = h * h * 2 + 2 * h * (h // heads) * kv
    params = layers * (attn + 3 * h * inter + 2 * h) + vocab * h * (1 if config.get("tie_word_embeddings") else 2) + h
    return params * 4


def plan_lines(inputs: Inputs) -> list[str]:
    cfg = inputs.cfg
    p, k, n = (
        min(cfg.prompts.per_iteration, len(inputs.pool)),
        cfg.actor.k,
        cfg.judge.n,
    )  # what prompts_for_iteration draws
    lines = [
        f"experiment {cfg.name}: model {cfg.model} ({inputs.model}), backend {cfg.backend}, {cfg.iterations} iterations, seed {cfg.seed}"
    ]
    warning = pool_warning(cfg, inputs.pool)
    if warning:
        lines.append(f"warning: {warning}")
    train = "full fine-tuning" if cfg.train.lora is None else f"LoRA r={cfg.train.lora.r} merged"
    if cfg.sft.file:
        lines.append(
            f"sft: {len(inputs.sft or [])} examples, {cfg.sft.epochs} epoch(s) of a {cfg.sft.horizon}-epoch cosine schedule, "
            f"lr {cfg.sft.lr:g}, global batch {cfg.sft.batch_size}, {'full fine-tuning' if cfg.sft.lora is None else 'LoRA'} -> M1"
        )
    lines.append("beyond the paper: " + "; ".join(switch_lines(cfg)))
    for t in range(1, cfg.iterations + 1):
        judge_it = t in cfg.pairs.judge_iterations
        epochs = at(cfg.train.epochs, t)
        horizon = cfg.train.horizon(t)
        lines.append(
            f"iteration {t}: {p} prompts; actor {p * k} samples; judge {p * k * n} judgements; "
            + (f"meta-judge up to {p * n * (n - 1)} calls; " if judge_it else "no meta-judge; ")
            + f"pairs: actor (rho {at(cfg.pairs.rho, t)})"
            + (" + judge" if judge_it else "")
            + "".join(f"; {c}" for c in switch_costs(cfg, t, p))
            + f"; DPO {train}, {epochs} epoch(s) of a {horizon}-epoch {cfg.train.scheduler} schedule, lr {cfg.train.lr:g}, "
            f"global batch {cfg.train.batch_size}"
        )
    lines += serving_plan(cfg, inputs.model)
    if cfg.train.launched:
        from mrtk.training.worker import launch_command as accelerate_command

        device = "cpu" if cfg.runtime.device == "cpu" else "cuda"
        lines.append(
            "DPO: accelerate launch "
            + " ".join(accelerate_command(Path("RUN/tmp/train<t>/spec.json"), cfg.train, device)[3:])
        )
        if cfg.train.accelerate_config:
            lines.append("accelerate config: " + _accelerate_summary(cfg.train.accelerate_config))
    else:
        lines.append("DPO: in this process")
    if cfg.train.lora is None:
        lines.append(
            "reference model: "
            + (
                "precomputed log-probs (no second copy)"
                if cfg.train.precompute_ref_log_probs
                else "a frozen copy of M_t made by TRL (precomputed log-probs when an iteration trains more than one epoch)"
                if cfg.train.precompute_ref_log_probs is None
                else "a frozen copy of M_t made by TRL"
            )
        )
    if cfg.train.report_to:
        lines.append(f"trackers: {', '.join(cfg.train.report_to)} (RUN/tracker/)")
    size = model_bytes(inputs.model)
    versions = cfg.iterations + (1 if cfg.sft.file else 0)
    kept = versions if cfg.runs.kept is None else min(cfg.runs.kept, versions)
    if size is None:
        lines.append(
            f"disk: {versions} model versions written, {kept} kept (runs.keep_models: {cfg.runs.keep_models}); "
            "size unknown offline (no local config.json)"
        )
    else:
        lines.append(
            f"disk: {size / 1e9:.1f} GB per model version (fp32); {versions} written, at most {min(kept + 1, versions)} "
            f"on disk at once, {kept} kept (runs.keep_models: {cfg.runs.keep_models}): {kept * size / 1e9:.1f} GB at the end"
        )
    return lines


def switch_costs(cfg, t: int, prompts: int) -> list[str]:
    """What the switches that act in iteration t add to it (model calls, a second DPO), for `prompts`
    prompts: the one place a switch's cost is computed (the plan and the run's announcement)."""
    k, n, costs = cfg.actor.k, cfg.judge.n, []
    if cfg.consistency_model(t):
        costs.append(f"consistency re-judge {prompts * k * n} judgements by {cfg.consistency_model(t)}")
    if cfg.pairs.rejected_from == "initial" and t > 1:
        costs.append(f"anchors {prompts * k} M1 samples + {prompts * k * n} judgements")
    if cfg.pairs.chosen_from == "future":
        costs.append(
            f"future-guided chosen: a temporary DPO on up to {prompts} anchored pairs, {prompts * k} samples from it "
            f"+ {prompts * k * n} judgements by M{t}"
        )
    return costs


def switch_lines(cfg) -> list[str]:
    """The published follow-ups (docs/METHOD.md 8) by name: each on, or 'none' (the paper's loop)."""
    on = []
    if cfg.rewards == "verifier":
        on.append(
            "rewards: verifier (a CONTROL arm, not the method: answers scored by their IFEval checks, no judge or meta-judge)"
        )
    if cfg.prompts.heldout:
        on.append(
            f"prompts.heldout: {cfg.prompts.heldout} (a verifiable slice every M_t answers, never trained on: ground truth)"
        )
    if cfg.meta_judge.verdict == "soft":
        on.append("meta_judge.verdict: soft (order-debiased soft meta-judge verdicts, FairEval arXiv 2305.17926)")
    if cfg.train.consistency != "off":
        on.append(f"train.consistency: {cfg.train.consistency} (consistency-regularised DPO, CREAM arXiv 2410.12735)")
    if cfg.pairs.rejected_from == "initial":
        on.append("pairs.rejected_from: initial (anchored rejection, Temporal Self-Rewarding arXiv 2508.06026)")
    if cfg.pairs.chosen_from == "future":
        on.append(
            "pairs.chosen_from: future (future-guided chosen, Temporal Self-Rewarding arXiv 2508.06026; mrtk's reading)"
        )
    if cfg.train.sync_every_steps:
        s = cfg.train.sync_every_steps
        on.append(
            f"train.sync_every_steps: {s} (semi-online DPO, Lanchantin et al. arXiv 2506.21495: the policy synced after "
            f"each segment of {s * cfg.train.batch_size} prompts, reference M_t)"
        )
    return on or ["none (the paper's loop)"]


def _accelerate_summary(path: str) -> str:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return f"{path} (unreadable)"
    kind = raw.get("distributed_type", "?")
    if kind == "DEEPSPEED":
        kind += f" ZeRO-{(raw.get('deepspeed_config') or {}).get('zero_stage', '?')}"
    return f"{path}: {kind}, {raw.get('num_processes', '?')} processes on {raw.get('num_machines', 1)} machine(s)"
