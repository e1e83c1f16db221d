"""A run's inputs, checked before any weights load: templates (the meta-judge bound to the judge's
rubric), the prompt pool, SFT examples, the model path, the probe pairs, the accelerate config,
and (with the tokenizer) every prompt's and the longest meta-judge call's length."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from mrtk.present import trackers
from mrtk.config import RunConfig, with_template_sampling
from mrtk.data import load_human_pairs, load_pool, resolve_data_file, resolve_dir
from mrtk.errors import MrtkError
from mrtk.models import chat_token_ids, resolve_model, tokenizer_for
from mrtk.prompts import Template, bind_meta_judge, load_template
from mrtk.rows import derive_seed
from mrtk.training import sft


@dataclass(frozen=True)
class Templates:
    actor: Template
    judge: Template
    meta_judge: Template  # bound to the judge's rubric

    def all(self) -> tuple[Template, ...]:
        return (self.actor, self.judge, self.meta_judge)


@dataclass(frozen=True)
class Inputs:
    """What a run reads, checked: `cfg` is the effective config (data paths resolved, each stage's
    sampling merged: config > template > default), the one a run stores and every stage reads."""

    cfg: RunConfig
    templates: Templates
    pool: list[dict]
    sft: list[dict] | None
    model: str  # the resolved base model directory (or the hub id / "embedded" on a dry run)
    probe: list[dict] = field(default_factory=list)
    heldout: list[dict] = field(default_factory=list)  # verifiable prompts set aside from `pool` (prompts.heldout)


def check_inputs(cfg: RunConfig, config_dir: Path | None = None, load_tokenizer: bool = True) -> Inputs:
    """Everything that can be checked without loading weights: templates, data files, model path,
    and (with the tokenizer, which a hub id downloads) prompt and context lengths. `cfg` is left
    as it is; the effective config is built here, once. Relative data paths may sit beside the
    config (`config_dir`), also when a run is resumed."""
    effective = cfg.model_copy(deep=True)
    dirs = [resolve_dir(d, config_dir, "prompts.template_dirs") for d in cfg.prompts.template_dirs]
    judge_t = load_template(cfg.judge.template, dirs, role="judge")
    templates = Templates(
        actor=load_template(cfg.actor.template, dirs, role="actor"),
        judge=judge_t,
        meta_judge=bind_meta_judge(load_template(cfg.meta_judge.template, dirs, role="meta-judge"), judge_t),
    )
    pool = load_pool(resolve_data_file(cfg.prompts.file, config_dir))
    sft_examples = (
        sft.load_sft_examples(resolve_data_file(cfg.sft.file, config_dir, "sft.file")) if cfg.sft.file else None
    )
    model = (
        resolve_model(cfg.model) if load_tokenizer or cfg.model != "embedded" else cfg.model
    )  # embedded: no GGUF conversion
    trackers.check_installed(cfg.train.report_to)
    probe: list[dict] = []
    if cfg.probe.file:  # human-labelled pairs M_t judges every iteration
        path = resolve_data_file(cfg.probe.file, config_dir, "probe.file")
        pairs, _ = load_human_pairs(str(path))
        if not pairs:
            raise MrtkError(
                f"probe.file {cfg.probe.file}: no labelled pairs in it; give LLMBar/MT-Bench-human style pairs (mrtk eval judge's format)"
            )
        probe = pairs[: cfg.probe.limit]
        effective.probe.file = str(path)
    if cfg.train.accelerate_config:  # as given, beside the config, or shipped (accelerate/zero3_8gpu.yaml)
        effective.train.accelerate_config = str(
            resolve_data_file(
                cfg.train.accelerate_config,
                config_dir,
                "train.accelerate_config",
                "experiments",
                "give an accelerate config file (see experiments/accelerate/)",
            ).resolve()
        )
    for name, template in (
        ("actor", templates.actor),
        ("judge", templates.judge),
        ("meta_judge", templates.meta_judge),
    ):
        setattr(
            effective, name, with_template_sampling(getattr(cfg, name), template)
        )  # what the run stores is what the stages use
    pool, heldout = split_heldout(pool, cfg.prompts.heldout, cfg.seed, str(cfg.prompts.file))
    if cfg.rewards == "verifier" and (unchecked := [p["prompt_id"] for p in pool if not p["checks"]]):
        raise MrtkError(
            f"rewards: verifier scores answers by their prompts' IFEval checks, but {len(unchecked)} prompts of "
            f"{cfg.prompts.file} have none (first: {unchecked[0]}); use a verifiable pool (e.g. prompts.file=verifiable_small.jsonl)"
        )
    inputs = Inputs(
        cfg=effective, templates=templates, pool=pool, sft=sft_examples, model=model, probe=probe, heldout=heldout
    )
    if load_tokenizer:
        check_lengths(inputs)
    return inputs


def split_heldout(pool: list[dict], n: int, seed: int, name: str) -> tuple[list[dict], list[dict]]:
    """(the pool without the held-out slice, the slice): `n` prompts with checks, a seeded choice, in
    pool order. The slice is never drawn for training."""
    if n == 0:
        return pool, []
    checked = [p for p in pool if p["checks"]]
    if len(checked) < n or len(pool) <= n:
        raise MrtkError(
            f"prompts.heldout={n}: {name} has {len(checked)} prompts with IFEval checks and {len(pool)} in all; the "
            "slice needs that many checked prompts and leaves at least one to train on; lower prompts.heldout"
        )
    chosen = {p["prompt_id"] for p in random.Random(derive_seed(seed, "heldout")).sample(checked, n)}
    return [p for p in pool if p["prompt_id"] not in chosen], [p for p in pool if p["prompt_id"] in chosen]


def pool_warning(cfg: RunConfig, pool: list[dict]) -> str | None:
    """One line when the pool is smaller than one iteration's draw: every iteration then draws the
    whole pool (data.prompts_for_iteration), not prompts.per_iteration different prompts."""
    if len(pool) >= cfg.prompts.per_iteration:
        return None
    return (
        f"prompts.file holds {len(pool)} prompts, fewer than prompts.per_iteration={cfg.prompts.per_iteration}: each iteration "
        f"draws all {len(pool)} (the paper drew 5,000 of 20,000); set prompts.file to a larger pool"
    )


def check_lengths(inputs: Inputs) -> None:
    """Every prompt of the pool within prompts.max_prompt_tokens, and the longest meta-judge prompt
    the run can build (template + prompt + response + two judgements) within the model's context."""
    from transformers import AutoConfig

    cfg = inputs.cfg
    tok = tokenizer_for(inputs.model)  # the same object the loop then counts prompts and pairs with
    limit = cfg.prompts.max_prompt_tokens
    for p in inputs.pool + inputs.heldout:
        prompt_tokens(tok, p, limit)
    context = getattr(AutoConfig.from_pretrained(inputs.model), "max_position_embeddings", None)
    meta = len(tok(inputs.templates.meta_judge.body, add_special_tokens=False)["input_ids"])
    worst = (
        meta
        + limit
        + cfg.actor.max_new_tokens
        + 2 * (cfg.judge.max_new_tokens + 8)
        + cfg.meta_judge.max_new_tokens
        + 16
    )
    if context and worst > context:
        raise MrtkError(
            f"the longest meta-judge call could reach {worst} tokens, over the model's context of {context}; "
            "lower prompts.max_prompt_tokens or the max_new_tokens of actor, judge or meta_judge"
        )


def prompt_tokens(tok, prompt: dict, limit: int) -> int:
    """A prompt's length in tokens as the actor sees it (chat template applied), refused over `limit`."""
    n = len(chat_token_ids(tok, [{"role": "user", "content": prompt["text"]}], add_generation_prompt=True))
    if n > limit:
        raise MrtkError(
            f"prompt {prompt['prompt_id']}{' of ' + prompt['source'] if prompt.get('source') else ''} is {n} tokens, "
            f"over prompts.max_prompt_tokens={limit}; shorten or remove it, or raise the limit"
        )
    return n
