"""mrtk's own DPO step (`train.trainer: mrtk`): LoRA DPO with the sigmoid loss in one process,
each pair run as one packed sequence.

What it does differently from TRL 1.16's DPOTrainer, and why it is faster on the same pairs:
- One sequence per pair: prompt, chosen, rejected, with a 4D attention mask in which the rejected
  tokens see the prompt and themselves but not the chosen ones, and positions that restart after
  the prompt. TRL runs prompt + chosen and prompt + rejected as two padded rows, so the prompt
  (most of a judge pair: the rubric, the question and the answer) is computed twice.
- Log-probabilities only where a completion token is predicted: the output matrix (49152 x 576 on
  SmolLM2, a fifth of the model's products) multiplies completion positions only, and as a frozen
  matrix, so no gradient for it is computed.
- The reference log-probabilities in one inference pass before training (adapter disabled; with
  B = 0 at the start that is M_t exactly), not a second forward in every step.

What it keeps equal to TRL (tests/test_packed_dpo.py checks three optimizer steps' losses, metrics
and the adapter after them against TRL's on the same pairs): the prompt/completion split of the chat-templated pair (TRL's
`common_prefix_length` rule, dpo_trainer.py:1075-1125), log-probs summed over completion tokens,
-logsigmoid(beta x margin) averaged over the pairs, fused AdamW with HF's defaults (betas 0.9 /
0.999, eps 1e-8, no decay), gradient clipping at 1.0, HF's scheduler over `schedule_epochs`, loss
divided by the micro-batches of each accumulation group, bf16 autocast where TRL would use it.
Label smoothing is the conservative loss itself, (1 - e) A + e B, for any e (TRL needs the
robust-loss detour, dpo.smoothed_losses).

What it does not do: other loss types, full fine-tuning, several processes, trackers. `train.trainer:
auto` picks it only where it applies (`TrainCfg.own_step_blocked`), TRL elsewhere; `mrtk` elsewhere is
refused by the config.
"""

from __future__ import annotations

import contextlib
import math
import os

from mrtk.models import chat_token_ids

# the segments of a packed row: which keys a query may see
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3
REF_PAIRS = 8  # pairs per inference pass for the reference log-probs (no activations kept: memory is small)


def split_pair(tokenizer, example: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen ids, rejected ids) as TRL splits a conversational pair: the chat template
    of the prompt with the generation prompt, of prompt + each side, and the completions start
    where both sides part from the prompt (dpo_trainer.py:1075-1125)."""
    prompt = chat_token_ids(tokenizer, example["prompt"], add_generation_prompt=True)
    chosen = chat_token_ids(tokenizer, example["prompt"] + example["chosen"])
    rejected = chat_token_ids(tokenizer, example["prompt"] + example["rejected"])
    n = len(os.path.commonprefix([prompt, chosen, rejected]))
    return prompt[:n], chosen[n:], rejected[n:]


def packed_batch(triples: list[tuple[list[int], list[int], list[int]]], pad_id: int):
    """Packed rows for pairs (prompt, chosen, rejected): input_ids and position_ids (B, T), the bool
    mask (B, 1, T, T; True: may attend), and for each side the row positions whose output predicts
    a completion token, with those tokens (padded; `lengths` says how many are real).

    A completion's first token is predicted from the prompt's last position (for both sides), each
    later token from the one before it. A padded query attends causally to everything, so no row
    of the mask is empty; real tokens never see the padding (it comes after them)."""
    import torch

    B = len(triples)
    T = max(len(p) + len(c) + len(r) for p, c, r in triples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), PAD, dtype=torch.long)
    L = max(max(len(c), len(r)) for _, c, r in triples)
    where = {s: torch.zeros((B, L), dtype=torch.long) for s in ("chosen", "rejected")}
    target = {s: torch.full((B, L), pad_id, dtype=torch.long) for s in ("chosen", "rejected")}
    lengths = {s: torch.zeros(B, dtype=torch.long) for s in ("chosen", "rejected")}
    for b, (p, c, r) in enumerate(triples):
        P, C, R = len(p), len(c), len(r)
        ids[b, : P + C + R] = torch.tensor(p + c + r)
        pos[b, :P] = torch.arange(P)
        pos[b, P : P + C] = torch.arange(P, P + C)
        pos[b, P + C : P + C + R] = torch.arange(P, P + R)
        seg[b, :P], seg[b, P : P + C], seg[b, P + C : P + C + R] = PROMPT, CHOSEN, REJECTED
        for side, start, toks in (("chosen", P, c), ("rejected", P + C, r)):
            n = len(toks)
            where[side][b, :n] = torch.tensor([P - 1] + list(range(start, start + n - 1)))
            target[side][b, :n] = torch.tensor(toks)
            lengths[side][b] = n
    causal = torch.ones((T, T), dtype=torch.bool).tril()
    hidden_chosen = (seg[:, :, None] == REJECTED) & (seg[:, None, :] == CHOSEN)
    mask = (causal[None] & ~hidden_chosen)[:, None]
    return {"input_ids": ids, "position_ids": pos, "mask": mask, "where": where, "target": target, "lengths": lengths}


def pair_logps(peft_model, batch, device: str):
    """(chosen log-probs, rejected log-probs), each (B,), summed over the completion tokens, through
    the adapter as it is now; logits only at the positions that predict a completion token."""
    import torch

    base = peft_model.get_base_model()
    mask = batch["mask"].to(device)
    if base.config._attn_implementation == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, device=device).masked_fill_(~mask, torch.finfo(torch.float32).min)
    hidden = base.get_decoder()(
        input_ids=batch["input_ids"].to(device),
        position_ids=batch["position_ids"].to(device),
        attention_mask=mask,
        use_cache=False,
    ).last_hidden_state
    head = base.get_output_embeddings().weight.detach()
    out = []
    for side in ("chosen", "rejected"):
        where, target = batch["where"][side].to(device), batch["target"][side].to(device)
        h = torch.gather(hidden, 1, where[..., None].expand(-1, -1, hidden.size(-1)))
        logp = torch.log_softmax((h @ head.T).float(), dim=-1)
        tok = torch.gather(logp, 2, target[..., None])[..., 0]
        real = torch.arange(where.size(1), device=device)[None] < batch["lengths"][side].to(device)[:, None]
        out.append((tok * real).sum(dim=1))
    return out[0], out[1]


def reference_logps(peft_model, batches, device: str, autocast) -> list[tuple]:
    """Each batch's (chosen, rejected) log-probs under the starting model: the adapter disabled."""
    import torch

    peft_model.eval()
    with peft_model.disable_adapter(), torch.inference_mode(), autocast():
        return [tuple(x.float().clone() for x in pair_logps(peft_model, b, device)) for b in batches]


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float, smoothing: float):
    """Per-pair loss (1 - e) A + e B, A = -logsigmoid(beta d), B = -logsigmoid(-beta d), d the margin
    of log-ratios; and TRL's metric names for the step's rows."""
    import torch.nn.functional as F

    rc, rr = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    d = rc - rr
    loss = (1.0 - smoothing) * -F.logsigmoid(d) + smoothing * -F.logsigmoid(-d)
    metrics = {
        "rewards/chosen": rc.detach(),
        "rewards/rejected": rr.detach(),
        "rewards/margins": d.detach(),
        "rewards/accuracies": (d.detach() > 0).float(),
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
    }
    return loss, metrics


def fit(
    peft_model,
    tokenizer,
    examples: list[dict],
    cfg,
    *,
    iteration: int,
    seed: int,
    device: str,
    bf16: bool,
    on_step=None,
) -> list[dict]:
    """Train the PEFT model's adapter in place on `examples` (chat-format pairs) for the iteration's
    epochs, the schedule spanning `cfg.horizon(iteration)`. Returns a train_metrics row per optimizer
    step (`recipe.record_step`, as TRL's steps are recorded). The pairs are shuffled each epoch from `seed`."""
    triples = [split_pair(tokenizer, ex) for ex in examples]
    with _eager_on_cpu(peft_model, device):
        return _fit(peft_model, tokenizer, triples, cfg, iteration, seed, device, _autocast(device, bf16), on_step)


def _autocast(device: str, bf16: bool):
    """A factory of the training passes' autocast context: bf16 where asked, else none."""
    import contextlib

    import torch

    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    return (lambda: torch.autocast(dev_type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext


@contextlib.contextmanager
def _eager_on_cpu(peft_model, device: str):
    """Eager attention while training on CPU (torch 2.13's CPU sdpa with a mask: bf16 at a third of
    eager's speed, fp32 at eager's), the model's own attention restored after."""
    base = peft_model.get_base_model()
    attention = base.config._attn_implementation
    if not device.startswith("cuda"):
        base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(attention)


def _fit(peft_model, tokenizer, triples, cfg, iteration, seed, device, autocast, on_step):
    from mrtk.config import at
    from mrtk.training.recipe import accumulation, record_step

    micro, accum = cfg.micro_batch_size, accumulation(cfg.batch_size, cfg.micro_batch_size, 1)
    pad = _pad_id(tokenizer)
    ref_c, ref_r = _references(peft_model, triples, pad, device, autocast)
    groups_per_epoch = math.ceil(math.ceil(len(triples) / micro) / accum)
    epochs, horizon = at(cfg.epochs, iteration), cfg.horizon(iteration)
    params, opt, sched = _optimizer(peft_model, cfg, groups_per_epoch * horizon)
    _checkpointing(peft_model, cfg, True)
    peft_model.train()
    gen = _generator(seed)
    rows: list[dict] = []
    for epoch in range(epochs):
        order = _shuffled(len(triples), gen)
        micros = [order[i : i + micro] for i in range(0, len(order), micro)]
        for g in range(groups_per_epoch):
            group = micros[g * accum : (g + 1) * accum]
            logs = _step(peft_model, triples, group, (ref_c, ref_r), cfg, pad, device, autocast, (params, opt, sched))
            logs["epoch"] = epoch + (g + 1) / groups_per_epoch
            record_step(rows, iteration, len(rows) + 1, logs, on_step)
    _checkpointing(peft_model, cfg, False)
    return rows


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _references(peft_model, triples, pad: int, device: str, autocast):
    """The reference's (adapter disabled) summed log-probs of each pair's chosen and rejected sides."""
    import torch

    by_length = sorted(range(len(triples)), key=lambda i: sum(map(len, triples[i])))  # like lengths share a pass
    ref_batches = [by_length[i : i + REF_PAIRS] for i in range(0, len(by_length), REF_PAIRS)]
    ref = reference_logps(
        peft_model, [packed_batch([triples[i] for i in b], pad) for b in ref_batches], device, autocast
    )
    ref_c, ref_r = torch.zeros(len(triples), device=device), torch.zeros(len(triples), device=device)
    for b, (c, r) in zip(ref_batches, ref):
        ref_c[b], ref_r[b] = c.to(device), r.to(device)
    return ref_c, ref_r


def _optimizer(peft_model, cfg, total: int):
    """(trainable params, fused AdamW with HF's defaults, HF's scheduler over `total` steps)."""
    import torch
    from transformers import get_scheduler

    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    warmup = int(cfg.warmup_ratio) if cfg.warmup_ratio >= 1 else math.ceil(total * cfg.warmup_ratio)
    return params, opt, get_scheduler(cfg.scheduler, opt, num_warmup_steps=warmup, num_training_steps=total)


def _checkpointing(peft_model, cfg, on: bool) -> None:
    if cfg.gradient_checkpointing and on:
        peft_model.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif cfg.gradient_checkpointing:
        peft_model.get_base_model().gradient_checkpointing_disable()


def _generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed % (2**31))


def _shuffled(n: int, gen) -> list[int]:
    import torch

    return torch.randperm(n, generator=gen).tolist()


def _step(peft_model, triples, group, refs, cfg, pad, device, autocast, optim) -> dict:
    """One optimizer step over `group` (micro-batches of pair indices): the loss divided by the
    micro-batches, clipped at 1.0; returns the step's logs (loss, metrics, grad_norm, learning_rate)."""
    import torch

    (ref_c, ref_r), (params, opt, sched) = refs, optim
    logs = {"loss": 0.0}
    for idx in group:
        with autocast():
            chosen, rejected = pair_logps(peft_model, packed_batch([triples[i] for i in idx], pad), device)
        loss, metrics = dpo_loss(
            chosen.float(), rejected.float(), ref_c[idx], ref_r[idx], cfg.beta, cfg.label_smoothing
        )
        (loss.mean() / len(group)).backward()
        metrics["loss"] = loss.detach()
        for k, v in metrics.items():
            logs[k] = logs.get(k, 0.0) + v.mean().item() / len(group)
    logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
    logs["learning_rate"] = opt.param_groups[0]["lr"]  # the rate this step used, as TRL logs it
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return logs


class Segments:
    """mrtk's step held open over an iteration's segments (train.sync_every_steps): the adapter, AdamW's
    state and the schedule (over `total` steps) carry over from one segment to the next, and the
    reference is the model the adapter sits on (M_t), for every segment. `state()` / `restore()` are
    what a resume needs to go on from a sync: the adapter's weights, the optimizer, the schedule and the
    rows so far."""

    def __init__(self, peft_model, tokenizer, cfg, *, iteration: int, seed: int, device: str, bf16: bool, total: int):
        self.model, self.tok, self.cfg = peft_model, tokenizer, cfg
        self.it, self.seed, self.device, self.autocast = iteration, seed, device, _autocast(device, bf16)
        self.optim = _optimizer(peft_model, cfg, total)
        self.rows: list[dict] = []

    def train(self, examples: list[dict], segment: int, on_step=None) -> list[dict]:
        """One pass over `examples` (the segment's pairs, shuffled by seed and segment), in steps of
        batch_size; returns the new train_metrics rows (numbered on from the segment before)."""
        from mrtk.rows import derive_seed
        from mrtk.training.recipe import accumulation, record_step

        if not examples:
            return []
        triples = [split_pair(self.tok, ex) for ex in examples]
        micro, accum = self.cfg.micro_batch_size, accumulation(self.cfg.batch_size, self.cfg.micro_batch_size, 1)
        pad = _pad_id(self.tok)
        order = _shuffled(len(triples), _generator(derive_seed(self.seed, self.it, "segment", segment)))
        micros = [order[i : i + micro] for i in range(0, len(order), micro)]
        new: list[dict] = []
        with _eager_on_cpu(self.model, self.device):
            refs = _references(self.model, triples, pad, self.device, self.autocast)
            _checkpointing(self.model, self.cfg, True)
            self.model.train()
            try:
                for g in range(0, len(micros), accum):
                    group = micros[g : g + accum]
                    logs = _step(
                        self.model, triples, group, refs, self.cfg, pad, self.device, self.autocast, self.optim
                    )
                    logs["epoch"] = float(segment)
                    record_step(self.rows, self.it, len(self.rows) + 1, logs, on_step)
                    new.append(self.rows[-1])
            finally:
                _checkpointing(self.model, self.cfg, False)
        return new

    def state(self) -> dict:
        from peft import get_peft_model_state_dict

        _, opt, sched = self.optim
        return {
            "adapter": get_peft_model_state_dict(self.model),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rows": self.rows,
        }

    def restore(self, state: dict) -> None:
        from peft import set_peft_model_state_dict

        _, opt, sched = self.optim
        set_peft_model_state_dict(self.model, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        self.rows = list(state["rows"])
