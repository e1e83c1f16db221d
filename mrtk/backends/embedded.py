"""The embedded backend: transformers on CPU or CUDA, with our own decode loop.

Why not `model.generate`: we need per-sample seeds (so a resumed stage regenerates exactly
the rows it lost, whatever the batch), the prompt prefilled once for all its samples
(`DynamicCache.batch_repeat_interleave`), per-row stop strings, and the structured
judge program (a fixed suffix after the sampled text, then the next-token probabilities of
a few choice tokens) on the same KV cache. Sampling happens inside a top-k window of the
logits (50 by default) and widens the window for any row whose window holds less than `top_p`
of the mass, so it equals plain top-p sampling.

Two more savings: a prompt prefix shared by the whole batch (the chat header, a judge's
system + rubric text) is prefilled once and its KV copied to every row; and the KV cache
grows into spare capacity instead of concatenating a new tensor per layer per step.
"""

from __future__ import annotations

import inspect
import time
from typing import Sequence

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer

from mrtk import faults
from mrtk.backends.base import Generation, Progress, Request, SamplingParams
from mrtk.errors import MrtkError
from mrtk.models import chat_token_ids

TOP_K_WINDOW = 50
WIDE_WINDOW = 1024  # second window for rows whose top-50 misses part of the nucleus (topk's fast range on CUDA)
MIN_SHARED_PREFIX = 16  # tokens; a shorter common prefix is not worth a separate pass
KV_GROW = 64  # spare KV positions allocated at a time


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of a buffer with spare room, so a decode step
    writes its new position in place instead of copying the whole cache (`torch.cat` of every
    layer's K and V was 13% of a batch-64 decode step). Supports what our decode loop uses:
    update and batch_repeat_interleave; and truncate, for the SGLang stand-in's prefix cache."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.device, self.is_initialized, self.n = key_states.device, True, 0
            self._k = self._v = None
        n, s = self.n, key_states.shape[-2]
        if self._k is None or n + s > self._k.shape[-2]:
            self._k, self._v = (
                self._grown(buf, new, n + s + KV_GROW) for buf, new in ((self._k, key_states), (self._v, value_states))
            )
        self._k[:, :, n : n + s].copy_(key_states)
        self._v[:, :, n : n + s].copy_(value_states)
        self.n = n + s
        self.keys, self.values = self._k[:, :, : self.n], self._v[:, :, : self.n]
        return self.keys, self.values

    def _grown(self, buf, new, cap):
        b, h, _, d = new.shape
        out = new.new_empty((b, h, cap, d))
        if buf is not None:
            out[:, :, : self.n].copy_(buf[:, :, : self.n])
        return out

    def get_seq_length(self) -> int:
        return self.n if self.is_initialized else 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._k, self._v = self._k.repeat_interleave(repeats, dim=0), self._v.repeat_interleave(repeats, dim=0)
            self.keys, self.values = self._k[:, :, : self.n], self._v[:, :, : self.n]

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions (the next update writes after them)."""
        if self.get_seq_length() > length:
            self.n = length
            self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]


def new_cache() -> Cache:
    return Cache(layer_class_to_replicate=GrowingLayer)


def cache_kwarg(model) -> str:
    """The name the model's forward takes its KV cache by: `cache` in recent transformers 5.x,
    `past_key_values` before. The old name is deprecated (to be removed in 5.40), and once gone
    it would fall into forward's **kwargs unread: every decode step would run without its context."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def shared_prefix_len(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving at least one own token per prompt (its last
    position gives the first next-token logits); 0 when below MIN_SHARED_PREFIX or one prompt."""
    if len(prompts) < 2:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return n if n >= MIN_SHARED_PREFIX else 0


class EmbeddedBackend:
    name = "embedded"

    def __init__(
        self, model, tokenizer, *, max_batch_rows: int = 64, max_batch_tokens: int = 16384, share_prefix: bool = True
    ):
        self.model = model
        self.cache_kw = cache_kwarg(model)
        self.share_prefix = share_prefix
        self.tok = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_rows = max_batch_rows
        self.max_batch_tokens = max_batch_tokens
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # -- tokens -------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        return chat_token_ids(self.tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)

    def _choice_ids(self, choices: dict[str, str]) -> dict[str, list[int]]:
        """Token ids of each choice: one token, or two whose first token is shared by all the
        two-token choices (so "1".."10" works with digit-by-digit tokenizers)."""
        ids = {label: self.tok(piece, add_special_tokens=False)["input_ids"] for label, piece in choices.items()}
        multi = {tuple(v[:1]) for v in ids.values() if len(v) > 1}
        if any(len(v) == 0 or len(v) > 2 for v in ids.values()) or len(multi) > 1:
            raise MrtkError(
                f"structured program choices {list(choices.values())} are not one token each (or two with a shared first token) "
                "for this tokenizer; narrow the template's score_range or use free_text mode"
            )
        return ids

    # -- public -------------------------------------------------------------------------
    def window(self) -> int:
        return 0  # in-process: one batch at a time, sized by max_batch_rows / max_batch_tokens

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[Request],
        params: SamplingParams,
        *,
        suffix: str | None = None,
        choices: dict[str, str] | None = None,
        on_progress: Progress | None = None,
    ) -> list[list[Generation]]:
        encoded = [self.encode(r.prompt) for r in requests]
        suffix_ids = self.tok(suffix, add_special_tokens=False)["input_ids"] if suffix else []
        choice_ids = self._choice_ids(choices) if choices else None
        results: list[list[Generation] | None] = [None] * len(requests)
        for batch in self._batches(encoded, requests):
            t0 = time.perf_counter()
            outs = self._run(
                [encoded[i] for i in batch], [requests[i].seeds for i in batch], params, suffix_ids, choice_ids
            )
            per_row = (time.perf_counter() - t0) / max(1, sum(len(o) for o in outs))
            for i, gens in zip(batch, outs):
                for g in gens:
                    g.latency_s = per_row
                results[i] = gens
            if on_progress:
                on_progress(sum(len(requests[i].seeds) for i in batch))
            faults.point("generate.batch")
        return results  # type: ignore[return-value]

    def _batches(self, encoded: list[list[int]], requests: Sequence[Request]) -> list[list[int]]:
        """Group requests of equal sample count, longest first, within row and token budgets."""
        order = sorted(range(len(encoded)), key=lambda i: (len(requests[i].seeds), -len(encoded[i])))
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            n = len(requests[i].seeds)
            if current:
                same_n = len(requests[current[0]].seeds) == n
                rows = (len(current) + 1) * n
                tokens = (len(current) + 1) * len(encoded[current[0]])  # longest is first: padded size
                if not same_n or rows > self.max_batch_rows or tokens > self.max_batch_tokens:
                    batches.append(current)
                    current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    # -- the decode loop ------------------------------------------------------------------
    def _prefill(self, prompts: list[list[int]]):
        """(cache, mask, last logits) for left-padded prompts. A shared prefix goes through the
        model once and its KV is copied to each row; the rows' own tokens follow it, left-padded,
        so a row's mask reads [1]*prefix [0]*pad [1]*own and positions skip the padding."""
        dev = self.device
        cache = new_cache()
        shared = shared_prefix_len(prompts) if self.share_prefix else 0
        if shared:
            head = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=dev)
            self.model(
                input_ids=head,
                position_ids=torch.arange(shared, device=dev)[None],
                **{self.cache_kw: cache},
                use_cache=True,
                logits_to_keep=1,
            )
            cache.batch_repeat_interleave(len(prompts))
            prompts = [p[shared:] for p in prompts]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        own = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p) :] = torch.tensor(p)
            own[b, width - len(p) :] = 1
        ids, own = ids.to(dev), own.to(dev)
        pos = shared + (own.cumsum(-1) - 1).clamp(min=0)
        attn = torch.cat([torch.ones((len(prompts), shared), dtype=torch.long, device=dev), own], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            **{self.cache_kw: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return cache, attn, out.logits[:, -1, :]

    def _run(self, prompts, seeds, params: SamplingParams, suffix_ids, choice_ids):
        dev = self.device
        n = len(seeds[0])
        cache, attn, logits = self._prefill(prompts)
        if n > 1:  # prefill once, then one KV copy per sample
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attn = attn.repeat_interleave(n, dim=0)
        rows = len(prompts) * n
        prompt_len = attn.sum(-1)  # [rows]
        next_pos = prompt_len.clone()
        gens = [torch.Generator().manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF) for row in seeds for s in row]
        tokens: list[list[int]] = [[] for _ in range(rows)]
        cols: list[list[int]] = [[] for _ in range(rows)]  # attention column of each fed token
        finish = ["length"] * rows
        done = [False] * rows
        need_tail = bool(suffix_ids)
        for step in range(params.max_new_tokens):
            sampled = sample_tokens(logits, gens, params.temperature, params.top_p).tolist()
            feed = torch.full((rows,), self.pad_id, dtype=torch.long)
            fed = torch.zeros(rows, dtype=torch.long)
            for r in range(rows):
                if done[r]:
                    continue
                t = sampled[r]
                if t in self.eos_ids:
                    done[r], finish[r] = True, "eos"
                    continue
                tokens[r].append(t)
                if params.stop and self._hit_stop(tokens[r], params.stop):
                    done[r], finish[r] = True, "stop"
                    continue
                feed[r], fed[r] = t, 1
            last = step == params.max_new_tokens - 1
            if all(done) or (last and not need_tail):
                break
            for r in range(rows):
                if fed[r]:
                    cols[r].append(attn.shape[1])
            attn = torch.cat([attn, fed.to(dev)[:, None]], dim=1)
            out = self.model(
                input_ids=feed.to(dev)[:, None],
                attention_mask=attn,
                position_ids=next_pos[:, None],
                **{self.cache_kw: cache},
                use_cache=True,
            )
            next_pos = next_pos + fed.to(dev)
            logits = out.logits[:, -1, :]
        texts = []
        for r in range(rows):
            keep = len(tokens[r])
            if finish[r] == "stop":
                keep = self._keep_before_stop(tokens[r], params.stop)
                for c in cols[r][keep:]:  # hide the stop string's tokens from the suffix pass
                    attn[r, c] = 0
                next_pos[r] = prompt_len[r] + keep
            tokens[r] = tokens[r][:keep]
            texts.append(self.tok.decode(tokens[r], skip_special_tokens=True))
        probs = self._choice_probs(cache, attn, next_pos, suffix_ids, choice_ids) if suffix_ids and choice_ids else None
        results = []
        for b in range(len(prompts)):
            row_gens = []
            for j in range(n):
                r = b * n + j
                row_gens.append(Generation(texts[r], len(tokens[r]), finish[r], 0.0, probs[r] if probs else None))
            results.append(row_gens)
        return results

    def _choice_probs(self, cache, attn, next_pos, suffix_ids, choice_ids):
        """Probability of each choice right after the suffix. A two-token choice [f, s] costs one
        more step with f fed: P(f s) = P(f) P(s | f), and a one-token choice f that is also a
        prefix keeps P(f) (1 - sum of P(s | f) over those continuations)."""
        p, attn = self._next_probs(cache, attn, next_pos, suffix_ids)
        labels = list(choice_ids)
        out = p[:, [choice_ids[k][0] for k in labels]]
        two = {k: v for k, v in choice_ids.items() if len(v) == 2}
        if two:
            first = next(iter(two.values()))[0]
            p2, _ = self._next_probs(cache, attn, next_pos + len(suffix_ids), [first])
            cont = p2[:, [v[1] for v in two.values()]]
            for i, k in enumerate(labels):
                if k in two:
                    out[:, i] = out[:, i] * p2[:, choice_ids[k][1]]
                elif choice_ids[k] == [first]:
                    out[:, i] = out[:, i] * (1.0 - cont.sum(-1))
        return [dict(zip(labels, row)) for row in out.cpu().tolist()]

    def _next_probs(self, cache, attn, next_pos, feed_ids):
        """Feed the same tokens to every row, extending the cache: (next-token probabilities, the extended mask)."""
        dev = self.device
        rows, s = attn.shape[0], len(feed_ids)
        ids = torch.tensor(feed_ids, dtype=torch.long, device=dev).expand(rows, s)
        attn = torch.cat([attn, torch.ones((rows, s), dtype=attn.dtype, device=dev)], dim=1)
        pos = next_pos[:, None] + torch.arange(s, device=dev)[None, :]
        out = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            **{self.cache_kw: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float().softmax(-1), attn

    def _hit_stop(self, toks: list[int], stops: tuple[str, ...]) -> bool:
        tail = self.tok.decode(toks[-8:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def _keep_before_stop(self, toks: list[int], stops: tuple[str, ...]) -> int:
        """How many leading tokens decode to text that ends before the first stop string."""
        text = self.tok.decode(toks, skip_special_tokens=True)
        cut = min(i for i in (text.find(s) for s in stops) if i >= 0)
        keep = len(toks)
        while keep > 0 and len(self.tok.decode(toks[:keep], skip_special_tokens=True)) > cut:
            keep -= 1
        return keep


def sample_tokens(logits: torch.Tensor, gens: list[torch.Generator], temperature: float, top_p: float) -> torch.Tensor:
    """Top-p sampling, one generator per row, computed inside a top-k window of the logits: the
    window's probabilities are exp(logit/T - logsumexp over the vocabulary), exactly those of the
    full softmax. A row whose window holds less than `top_p` retries in a wider window, then
    over the whole sorted vocabulary, so the draw always equals plain top-p sampling. The work
    stays on the logits' device; only the per-row uniforms (from CPU generators, so a seed
    draws the same on any device) and the picked ids cross."""
    if temperature == 0.0:
        return logits.argmax(-1).cpu()
    scaled = logits.float() / temperature
    norm = scaled.logsumexp(-1, keepdim=True)
    u = torch.stack([torch.rand((), generator=g) for g in gens]).to(scaled.device)
    out = torch.empty(scaled.shape[0], dtype=torch.long, device=scaled.device)
    todo = torch.arange(scaled.shape[0], device=scaled.device)
    vocab = scaled.shape[-1]
    for k in (TOP_K_WINDOW, WIDE_WINDOW, vocab):
        k = min(k, vocab)
        # sorted, descending; for the whole vocabulary a sort (topk with k near the size is ~10x slower)
        top, idx = scaled[todo].topk(k, dim=-1) if k < vocab else scaled[todo].sort(dim=-1, descending=True)
        p = (top - norm[todo]).exp()
        covered = (p.sum(-1) >= top_p) | (k == vocab)
        if covered.any():
            out[todo[covered]] = _nucleus_pick(p[covered], idx[covered], u[todo[covered]], top_p)
        todo = todo[~covered]
        if len(todo) == 0:
            break
    return out.cpu()


def _nucleus_pick(p: torch.Tensor, idx: torch.Tensor, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """Inverse-CDF draw with uniforms `u` over the smallest prefix of sorted `p` holding `top_p`."""
    p = torch.where(p.cumsum(-1) - p < top_p, p, torch.zeros_like(p))
    cdf = p.cumsum(-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=p.shape[-1] - 1)
    return idx.gather(-1, pick).squeeze(-1)
