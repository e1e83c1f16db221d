"""A stand-in for an SGLang server (sglang 0.5.23 HTTP protocol), for tests on machines without
a GPU. It is NOT SGLang: it serves the embedded model through mrtk's own decode loop (behind a
prefix cache standing in for the radix cache: `PrefixCachingEngine`), and
implements only the endpoints and fields mrtk uses, with the behaviour of the released source
(`pip download --no-deps sglang==0.5.23`; file:line below are in that wheel):

- `POST /generate` (srt/entrypoints/http_server.py; GenerateReqInput in srt/managers/io_struct.py:177):
  `text` (a string or a list) or `input_ids` (a list of ints or a list of lists); `text` is
  tokenized with the tokenizer's default `add_special_tokens=True`
  (srt/managers/tokenizer_manager.py:1068), so a BOS-adding tokenizer gets a BOS in front of
  whatever the text holds; `sampling_params` one dict or one per input; an unknown key is
  HTTP 400 with serde's "unknown field" text; `json_schema` / `regex` / `ebnf` must be strings;
  a list input answers a list in input order, the `n` copies of each input grouped together
  (io_struct.py:617, `input_ids * parallel_sample_num`); `meta_info.finish_reason` is an object
  ({"type": "stop", "matched": ...} or {"type": "length", "length": N}); with `return_logprob`
  and `token_ids_logprob`, `meta_info.output_token_ids_logprobs` holds [logprob, token_id, null]
  entries per output position; `weight_version` is echoed.
  `regex` supports alternations of literals only, e.g. "(10|9|...|1)" (all mrtk sends).
- seeds (srt/sampling/sampling_batch_info.py:157-171): `sampling_seed` is used only when the
  server was started with --enable-deterministic-inference (`deterministic=True` here); then
  the `n` copies of one input share the seed and, since the seeded sampler hashes only
  (seed, position), come out identical. Otherwise every sample draws a fresh random seed.
- `GET /health`, `GET /model_info` (no version; http_server.py:812), `GET /server_info` and the
  deprecated `/get_server_info` (http_server.py:853-890: the server args, with
  `enable_deterministic_inference`, and `version`), `POST /release_memory_occupation`,
  `/resume_memory_occupation`, `/update_weights_from_disk` {model_path, weight_version}
  (really reloads the weights from disk), `/flush_cache`, which answers PLAIN TEXT
  (http_server.py:1025-1040), not JSON.

`SGLangRouterDouble` stands in for sglang-router 0.3.2: it forwards `/generate`, `/health`,
`/flush_cache` and `/get_model_info` to its workers round-robin and answers 404 on everything
else (no weight updates, no memory release).

Every request is recorded in `.log` as (path, body). Failure injection: `fail_next` answers
that many requests with HTTP 503; `die_after` stops serving after that many /generate calls.
Run it as a process with `python tests/sglang_double.py --model DIR --port P`.
"""

from __future__ import annotations

import copy
import math
import random
import re
import sys
import threading
from collections import OrderedDict

import torch

from mrtk.backends.embedded import EmbeddedBackend, new_cache, shared_prefix_len
from mrtk.bench.serving_sim import (
    COMMON,
    BadRequest,
    JsonHandler,
    Served,
    common_call,
    generate_inputs,
)

LOADING = threading.Lock()


class PrefixCachingEngine(EmbeddedBackend):
    """mrtk's decode loop behind a stand-in for SGLang's radix cache. A single prompt is
    prefilled in CHUNK-token pieces at fixed positions, and the KV of the last KEEP prompts is
    kept, so a prompt that shares whole pieces with one of them (a structured program's scoring
    call repeats its generation's prompt; K samples repeat one prompt) feeds only the rest. The
    pieces are the same computation with or without a hit, so an answer does not depend on what
    was asked before, as SGLang promises with --enable-deterministic-inference; `cached_tokens`
    reports the reuse, as SGLang's meta_info does."""

    CHUNK, KEEP = 128, 8

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept: OrderedDict[tuple[int, ...], tuple] = OrderedDict()  # prompt ids -> (its KV, its last logits)
        self.last_cached = 0

    def _prefill(self, prompts: list[list[int]]):
        if len(prompts) != 1:
            return super()._prefill(prompts)
        ids = prompts[0]
        usable = (len(ids) - 1) // self.CHUNK * self.CHUNK  # whole pieces, leaving the last token to compute
        start, source = 0, None
        for key in self.kept:
            reach = min(shared_prefix_len([list(key), ids]) // self.CHUNK * self.CHUNK, usable)
            if reach > start:
                start, source = reach, key
        if source is None:
            cache = new_cache()
        else:
            cache = copy.deepcopy(self.kept[source][0])
            for layer in cache.layers:
                layer.truncate(start)
        for s in range(start, len(ids), self.CHUNK):
            piece = ids[s : s + self.CHUNK]
            out = self.model(
                input_ids=torch.tensor([piece]),
                position_ids=torch.arange(s, s + len(piece))[None],
                **{self.cache_kw: cache},
                use_cache=True,
                logits_to_keep=1,
            )
        self.kept[tuple(ids)] = (
            copy.deepcopy(cache),
            out.logits[:, -1, :],
        )  # the KV before the decode loop writes into it
        self.kept.move_to_end(tuple(ids))
        while len(self.kept) > self.KEEP:
            self.kept.popitem(last=False)
        self.last_cached = start
        return cache, torch.ones((1, len(ids)), dtype=torch.long), out.logits[:, -1, :]

    def next_logits(self, ids: list[int]) -> torch.Tensor:
        """The next-token logits after `ids`: those of its prefill when it is still kept."""
        hit = self.kept.get(tuple(ids))
        return hit[1][0] if hit else self._prefill([ids])[2][0]


class SGLangDouble(Served):
    def __init__(
        self,
        model_dir: str,
        port: int = 0,
        weight_version: str = "M1",
        *,
        deterministic: bool = False,
        version: str = "0.5.23",
    ):
        from mrtk.models import load_model

        self.load = lambda path: PrefixCachingEngine(*load_model(path, "float32"), max_batch_rows=64)
        self.engine = self.load(model_dir)
        self.model_path, self.weight_version = model_dir, weight_version
        self.deterministic, self.version = deterministic, version
        self.rng = random.Random()
        self.log: list[tuple[str, dict | None]] = []
        self.released = False
        self.fail_next = 0
        self.die_after: int | None = None
        self.generate_calls = 0
        self.lock = threading.Lock()
        self._serve(port, self._handler())

    # -- HTTP ----------------------------------------------------------------------------
    def _handler(self):
        double = self

        class Handler(JsonHandler):
            def _route(self, body):
                with double.lock:
                    double.log.append((self.path, body))
                    if double.fail_next > 0:
                        double.fail_next -= 1
                        return self._reply(503, {"error": "injected: server busy"})
                    try:
                        status, payload = double.handle(self.path, body)
                    except BadRequest as e:
                        status, payload = 400, {"error": str(e)}
                self._reply(status, payload)
                if double.die_after is not None and double.generate_calls >= double.die_after:
                    threading.Thread(target=double.stop, daemon=True).start()

        return Handler

    def handle(self, path: str, body):
        if path in COMMON:
            return common_call(self, path)
        if path in ("/server_info", "/get_server_info"):
            return 200, {
                "model_path": self.model_path,
                "enable_deterministic_inference": self.deterministic,
                "version": self.version,
                "frontend": "python",
            }
        if path == "/update_weights_from_disk":
            try:
                with LOADING:  # doubles share one process, real servers do not: transformers' loads collide in threads
                    self.engine = self.load(body["model_path"])
            except Exception as e:  # SGLang answers success: false with HTTP 400
                return 400, {"success": False, "message": f"{type(e).__name__}: {e}", "num_paused_requests": 0}
            self.model_path, self.weight_version = body["model_path"], body.get("weight_version") or self.weight_version
            return 200, {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}
        if path == "/generate":
            if self.released:
                return 503, {"error": "memory released; call /resume_memory_occupation"}
            self.generate_calls += 1
            return 200, self.generate(body)
        return 404, {"detail": "Not Found"}

    # -- /generate -------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, body: dict):
        inputs, sps, single = generate_inputs(
            body, lambda t: self.engine.tok(t)["input_ids"]
        )  # add_special_tokens=True, as SGLang
        want_ids = body.get("token_ids_logprob")
        out = []
        for i, (ids, sp) in enumerate(zip(inputs, sps)):
            lp_ids = want_ids[i] if want_ids and isinstance(want_ids[0], list) else want_ids
            out += self._one(ids, sp, bool(body.get("return_logprob")), lp_ids, i)
        return out[0] if single and len(out) == 1 else out

    def _one(self, ids: list[int], sp: dict, return_logprob: bool, lp_ids, index: int) -> list[dict]:
        from mrtk.backends.base import SamplingParams

        n, max_new = int(sp.get("n", 1)), int(sp.get("max_new_tokens", 128))
        stops = sp.get("stop") or ()
        stops = (stops,) if isinstance(stops, str) else tuple(stops)
        meta = {"prompt_tokens": len(ids), "cached_tokens": 0, "weight_version": self.weight_version}
        if sp.get("regex"):
            return [self._constrained(ids, sp["regex"], meta, index) for _ in range(n)]
        if self.deterministic:  # one seed for all n copies: identical samples, as the real seeded sampler gives
            seeds = (int(sp["sampling_seed"] if sp.get("sampling_seed") is not None else 42),) * n
        else:  # sampling_seed ignored
            seeds = tuple(self.rng.randrange(2**31) for _ in range(n))
        params = SamplingParams(float(sp.get("temperature", 1.0)), float(sp.get("top_p", 1.0)), max_new, stops)
        [gens] = self.engine._run([ids], [seeds], params, [], None)
        meta["cached_tokens"] = self.engine.last_cached
        answers = []
        for j, g in enumerate(gens):
            if g.finish == "stop":
                finish = {"type": "stop", "matched": stops[0]}  # the stand-in does not track which stop string matched
            elif g.finish == "eos":
                finish = {"type": "stop", "matched": self.engine.tok.eos_token_id}
            else:
                finish = {"type": "length", "length": max_new}
            m = dict(meta, id=f"{index}-{j}", completion_tokens=g.n_tokens, finish_reason=finish)
            if return_logprob and lp_ids:
                m["output_token_ids_logprobs"] = [self._next_logprobs(ids, lp_ids)]
            answers.append({"text": g.text, "meta_info": m, "index": index * n + j})
        return answers

    @torch.inference_mode()
    def _next_logprobs(self, ids: list[int], wanted: list[int]) -> list[list]:
        lp = self.engine.next_logits(ids).float().log_softmax(-1)  # the logits the sample was drawn from
        return [[lp[t].item(), int(t), None] for t in wanted]

    @torch.inference_mode()
    def _constrained(self, ids: list[int], pattern: str, meta: dict, index: int) -> dict:
        m = re.fullmatch(r"\((.*)\)", pattern)
        if not m:
            raise BadRequest("this SGLang stand-in supports only '(a|b|...)' regex alternations")
        options = [re.sub(r"\\(.)", r"\1", o) for o in m.group(1).split("|")]
        cache, _, last = self.engine._prefill([ids])  # the prompt once; each longer option continues a copy of its KV
        first = last[0].float().log_softmax(-1)
        best, best_lp = None, -math.inf
        for o in options:
            toks = self.engine.tok(o, add_special_tokens=False)["input_ids"]
            lp = first[toks[0]].item()
            if len(toks) > 1:
                pos = torch.arange(len(ids), len(ids) + len(toks) - 1)[None]
                more = self.engine.model(
                    input_ids=torch.tensor([toks[:-1]]),
                    position_ids=pos,
                    **{self.engine.cache_kw: copy.deepcopy(cache)},
                    use_cache=True,
                ).logits[0]
                lp += sum(more.float().log_softmax(-1)[k, t].item() for k, t in enumerate(toks[1:]))
            if lp > best_lp:
                best, best_lp = o, lp
        return {
            "text": best,
            "meta_info": dict(
                meta, id=f"{index}", completion_tokens=1, finish_reason={"type": "stop", "matched": None}
            ),
            "index": index,
        }


class SGLangRouterDouble(Served):
    """sglang-router 0.3.2: generation and health forwarded to the workers round-robin, 404 on
    every control endpoint (no weight updates, no memory release)."""

    SERVED = ("/generate", "/health", "/flush_cache", "/get_model_info")

    def __init__(self, workers: list[SGLangDouble]):
        self.workers, self.turn = workers, 0
        self.log: list[tuple[str, dict | None]] = []
        router = self

        class Handler(JsonHandler):
            def _route(self, body):
                router.log.append((self.path, body))
                if self.path not in router.SERVED:
                    status, payload = 404, {"detail": "Not Found"}
                else:
                    worker = router.workers[router.turn % len(router.workers)]
                    router.turn += 1
                    with worker.lock:
                        worker.log.append((self.path, body))
                        try:
                            status, payload = worker.handle(self.path, body)
                        except BadRequest as e:
                            status, payload = 400, {"error": str(e)}
                self._reply(status, payload)

        self._serve(0, Handler)


if __name__ == "__main__":  # a separate process, for launch tests: python tests/sglang_double.py --model DIR --port P
    flags = [a for a in sys.argv[1:] if a != "--enable-deterministic-inference"]
    args = dict(zip(flags[0::2], flags[1::2]))
    with SGLangDouble(
        args["--model"],
        int(args.get("--port", 0)),
        args.get("--weight-version", "M1"),
        deterministic="--enable-deterministic-inference" in sys.argv,
    ) as d:
        print(d.url, flush=True)
        d.thread.join()
