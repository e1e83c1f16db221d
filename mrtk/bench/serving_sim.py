"""A simulated SGLang server with a continuous-batching latency model, for measuring how well the
SGLang client keeps servers busy (`mrtk bench --only serving`, tests) on machines without a GPU.

It is NOT SGLang and holds no model: it speaks the subset of SGLang 0.5.23's HTTP protocol mrtk
uses, with the behaviour of the released source (`pip download --no-deps sglang==0.5.23`;
file:line below are in that wheel), and answers with seeded pseudo-text whose timing follows a
model of the scheduler:

- `POST /generate` (srt/entrypoints/http_server.py:933; GenerateReqInput in
  srt/managers/io_struct.py:177): `input_ids` (a list of ints or a list of lists) or `text`;
  `sampling_params` one dict or one per input, an unknown key is HTTP 400 with serde's "unknown
  field" text; a list input answers a list in input order, the `n` copies of an input grouped
  (io_struct.py:529-542); `meta_info.finish_reason` is an object ({"type": "stop", "matched": id}
  or {"type": "length", "length": N}); with `return_logprob` and `token_ids_logprob`,
  `meta_info.output_token_ids_logprobs` holds [logprob, token_id, null] per output position;
  `weight_version` is echoed. A batch request is answered when all of its entries are done.
- `GET /server_info` (http_server.py:863-892): the server args (`max_running_requests`,
  `dp_size`, `enable_deterministic_inference`), `internal_states` with one dict per DP rank
  holding `effective_max_running_requests_per_dp`
  (srt/managers/scheduler_components/internal_state.py:73), `version`.
- `/health`, `/model_info`, `/release_memory_occupation` (a released server answers /generate
  with 503 here), `/resume_memory_occupation`, `/update_weights_from_disk` (HTTP 400 with
  success false when the path does not exist; the weight version changes the texts),
  `/flush_cache` (PLAIN TEXT, http_server.py:1025-1040).
- LoRA adapters (`enable_lora`, --enable-lora): `POST /load_lora_adapter` {lora_name, lora_path}
  (http_server.py:1652-1660, LoadLoRAAdapterReqInput io_struct.py:2516) answers LoRAUpdateOutput
  {success, error_message, loaded_adapters} (io_struct.py:2572), HTTP 400 with success false when
  LoRA is not enabled (tokenizer_control_mixin.py:667-670) or the name is already loaded
  (lora_manager.py:354-359); `/generate`'s `lora_path` names a loaded adapter for every input
  (io_struct.py:635-643), an unknown one is HTTP 400 (tokenizer_manager.py:3765-3770), and without
  --enable-lora any is (tokenizer_manager.py:3729-3740); the adapter changes the texts, and the
  radix cache keeps each adapter's prefixes apart.

The latency model: `slots` sequences decode together, one token each per step of `step_s`
(the whole batch, as continuous batching does); a step also pays `prefill_s_per_token` for every
prompt token not already in the radix cache (kept in blocks of `block` tokens, so a prompt's K
samples and its scoring requests prefill the shared prefix once); waiting entries join the
batch as slots free up (FIFO). Answer lengths are seeded and long-tailed: `long_share` of them
run to `max_new_tokens`, the rest are geometric with mean `mean_share * max_new_tokens`.
Capacity is `slots / step_s` tokens per second; `GET /sim_stats` (the stand-in's own) gives
decoded tokens, busy time and CPU time, from which the client's achieved share of capacity is
computed; in-process, `requests` holds every request's [path, samples, arrived, answered], from
which the servers' overlap is. Texts are seeded by (input,
sampling_seed, weight version): with `deterministic` (--enable-deterministic-inference) the same
request gives the same answer, greedy (temperature 0) always. `die_after`: stop, as a killed
server, once that many /generate requests have arrived (in-flight ones get no answer).

`SimRouter` forwards `/generate` over HTTP to the worker with the fewest outstanding samples
(what SGLang Model Gateway's load balancing converges to under load) and, with `rl=True`,
serves the gateway's RL control plane as `smg` 1.13.0's client reads it (smg/rl.py:141-217):
`GET /v1/rl/workers`, `/v1/rl/workers/{id}/engine/{path}` (one worker) and
`/v1/rl/engine/{path}?selector=...` (every worker; {results, failed, total, succeeded}).
Without `rl` it is sglang-router 0.3.2: generation only, 404 on control paths.

Run one as a process: `python -m mrtk.bench.serving_sim --port P [--slots C --step-ms S]`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import socket
import sys
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import asdict, dataclass
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SAMPLING_FIELDS = (
    "max_new_tokens",
    "stop",
    "stop_token_ids",
    "stop_regex",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "min_new_tokens",
    "n",
    "json_schema",
    "regex",
    "ebnf",
    "structural_tag",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "stream_interval",
    "logit_bias",
    "sampling_seed",
    "custom_params",
    "beam_width",
    "watermark",
    "choice",
)
FLUSHED = (
    "Cache flushed.\nPlease check backend logs for more details. "
    "(When there are running or waiting requests, the operation will not be performed.)\n"
)
WORDS = (
    "the answer is clear and well reasoned with a short example that shows each step of the idea in plain words "
    "so a reader can follow it and check the result against the question"
).split()


MEMORY = ("/release_memory_occupation", "/resume_memory_occupation")
COMMON = ("/health", "/model_info", "/get_model_info", "/flush_cache", *MEMORY)


class BadRequest(Exception):
    pass


def common_call(server, path: str) -> tuple[int, object]:
    """The endpoints every stand-in answers alike (COMMON): health, model info (no version,
    http_server.py:812), /flush_cache's plain text, memory release/resume (a released server
    answers /generate with 503 here)."""
    if path == "/health":
        return 200, None
    if path in ("/model_info", "/get_model_info"):
        return 200, {"model_path": server.model_path, "weight_version": server.weight_version, "is_generation": True}
    if path == "/flush_cache":
        return 200, FLUSHED
    server.released = path == MEMORY[0]
    return 200, {}


class JsonHandler(BaseHTTPRequestHandler):
    """GET and POST with an optional JSON body to `_route(body)`, HTTP/1.1 keep-alive (as uvicorn);
    `_reply` answers JSON, or plain text for a str payload (as SGLang's /flush_cache does)."""

    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.request.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )  # as uvicorn: no Nagle wait on keep-alive answers

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._route(None)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self._route(json.loads(self.rfile.read(n) or b"null"))

    def _route(self, body):
        raise NotImplementedError

    def _reply(self, status, payload):
        text = isinstance(payload, str)
        raw = payload.encode() if text else json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self._headers_buffer.append(b"\r\n")  # headers and body in one write
        self.wfile.write(b"".join(self._headers_buffer) + raw)
        self._headers_buffer = []


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(
            sys.exc_info()[1], (ConnectionError, TimeoutError)
        ):  # a client killed mid-request is no server error
            super().handle_error(request, client_address)


class Served:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread, as a context manager."""

    def _serve(self, port: int, handler) -> None:
        self.httpd = _HTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def generate_inputs(body, tokenize) -> tuple[list[list[int]], list[dict], bool]:
    """A /generate body's inputs and per-input sampling params, checked as SGLang checks them;
    `single`: one input given bare (answered with one object, not a list)."""
    if not isinstance(body, dict):
        raise BadRequest("invalid type: expected a JSON object")
    if (body.get("text") is None) == (body.get("input_ids") is None):
        raise BadRequest("Either text, input_ids or input_embeds should be provided.")
    if body.get("text") is not None:
        texts = body["text"]
        single = isinstance(texts, str)
        texts = [texts] if single else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadRequest("invalid type for `text`: expected a string or a list of strings")
        inputs = [tokenize(t) for t in texts]
    else:
        inputs = body["input_ids"]
        single = isinstance(inputs, list) and bool(inputs) and isinstance(inputs[0], int)
        inputs = [inputs] if single else inputs
        if not inputs or not all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in inputs):
            raise BadRequest("input_ids cannot be empty.")
    sps = body.get("sampling_params") or {}
    sps = [sps] * len(inputs) if isinstance(sps, dict) else sps
    if len(sps) != len(inputs):
        raise BadRequest("The length of sampling_params and text must match")
    for sp in sps:
        for key in sp:
            if key not in SAMPLING_FIELDS:
                raise BadRequest(
                    f"unknown field `{key}`, expected one of {', '.join(f'`{f}`' for f in SAMPLING_FIELDS)}"
                )
        for key in ("json_schema", "regex", "ebnf"):
            if key in sp and sp[key] is not None and not isinstance(sp[key], str):
                raise BadRequest(f"invalid type for `{key}`: expected a string")
    return inputs, sps, single


@dataclass(frozen=True)
class LatencyModel:
    slots: int = 32  # sequences decoded together (max_running_requests)
    step_s: float = 0.002  # one decode step of the whole batch
    prefill_s_per_token: float = 2e-7  # each prompt token not in the radix cache
    long_share: float = 0.05  # answers that run to max_new_tokens
    mean_share: float = 0.15  # the others: geometric, mean this share of max_new_tokens
    block: int = 32  # radix-cache block (tokens)

    @property
    def capacity(self) -> float:
        """Tokens per second with every slot decoding."""
        return self.slots / self.step_s

    def length(self, rng: random.Random, max_new: int) -> int:
        if max_new <= 1 or rng.random() < self.long_share:
            return max(1, max_new)
        mean = max(1.0, self.mean_share * max_new)
        return max(1, min(max_new, int(rng.expovariate(1.0 / mean)) + 1))


class _Batch:
    """One /generate request: answered when all its entries are done."""

    def __init__(self, n: int):
        self.left, self.done, self.error = n, threading.Event(), None


@dataclass
class _Entry:
    blocks: list[tuple[int, int]]
    length: int
    batch: _Batch
    decoded: int = 0


class SimServer(Served):
    """One simulated SGLang server (see the module docstring)."""

    def __init__(
        self,
        model: LatencyModel = LatencyModel(),
        port: int = 0,
        *,
        weight_version: str = "M1",
        deterministic: bool = True,
        version: str = "0.5.23",
        dp_size: int = 1,
        model_path: str = "sim",
        enable_lora: bool = False,
    ):
        self.model, self.weight_version, self.deterministic, self.version = (
            model,
            weight_version,
            deterministic,
            version,
        )
        self.dp_size, self.model_path = dp_size, model_path
        self.enable_lora, self.adapters = enable_lora, {}  # adapter name -> its path
        self.lora_samples: dict[str | None, int] = {}  # samples generated per adapter named (None: the base)
        self.released = False
        self.cond = threading.Condition()
        self.waiting: deque[_Entry] = deque()
        self.running: list[_Entry] = []
        self.cache: set[int] = set()
        self.tokens = self.steps = self.prefilled = 0
        self.busy_s = 0.0
        self.requests: list[list] = []  # [path, samples, arrived, answered] per /generate, in arrival order
        self.open_requests = 0  # /generate requests arrived and not yet answered
        self.log: list[tuple[str, dict | None]] = []  # control calls (weights, memory), as the other stand-ins
        self.stopped = False
        self.die_after: int | None = None  # stop (as a killed server) when this many /generate requests have arrived
        self.refit_s = 0.0  # how long a weight update takes before it answers (the version changes at the end)
        self._serve(port, self._handler())
        self.scheduler = threading.Thread(target=self._schedule, daemon=True)

    def __enter__(self):
        self.scheduler.start()
        return super().__enter__()

    def stop(self):
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        super().stop()

    # -- the scheduler ----------------------------------------------------------------------
    def _schedule(self) -> None:
        m = self.model
        while True:
            with self.cond:
                while not self.stopped and not self.waiting and not self.running:
                    self.cond.wait()
                if self.stopped:
                    for e in list(self.waiting) + self.running:
                        e.batch.error = "server stopped"
                        e.batch.done.set()
                    return
                t0 = time.monotonic()
                prefill = 0
                while self.waiting and len(self.running) < m.slots:
                    e = self.waiting.popleft()
                    prefill += self._prefill(e.blocks)
                    self.running.append(e)
                self.prefilled += prefill
                still = []
                for e in self.running:
                    e.decoded += 1
                    if e.decoded >= e.length:
                        e.batch.left -= 1
                        if e.batch.left == 0:
                            e.batch.done.set()
                    else:
                        still.append(e)
                self.tokens += len(self.running)
                self.steps += 1
                self.running = still
            step = m.step_s + prefill * m.prefill_s_per_token
            time.sleep(max(0.0, t0 + step - time.monotonic()))
            self.busy_s += time.monotonic() - t0

    def _blocks(self, ids: list[int], lora: str | None = None) -> list[tuple[int, int]]:
        """(chained hash, tokens) per radix-cache block of a prompt (each adapter's apart); a partial last
        block has hash 0 (never cached)."""
        b, h, out = self.model.block, hash(lora), []
        for start in range(0, len(ids), b):
            block = ids[start : start + b]
            h = hash((h, tuple(block)))
            out.append((h if len(block) == b else 0, len(block)))
        return out

    def _prefill(self, blocks: list[tuple[int, int]]) -> int:
        """Prompt tokens not in the radix cache (whole blocks of a shared prefix are hits)."""
        new = 0
        for h, n in blocks:
            if h and h in self.cache:
                continue
            new += n
            if h:
                self.cache.add(h)
        return new

    # -- HTTP ----------------------------------------------------------------------------
    def _handler(self):
        sim = self

        class Handler(JsonHandler):
            def _route(self, body):
                try:
                    status, payload = sim.handle(self.path, body)
                except BadRequest as e:
                    status, payload = 400, {"error": str(e)}
                if status is None:  # stopped mid-request: drop the connection, as a killed server does
                    self.close_connection = True
                    return
                self._reply(status, payload)

        return Handler

    def info(self) -> dict:
        per_dp = max(1, self.model.slots // self.dp_size)
        return {
            "model_path": self.model_path,
            "enable_deterministic_inference": self.deterministic,
            "version": self.version,
            "max_running_requests": per_dp,
            "dp_size": self.dp_size,
            "frontend": "python",
            "internal_states": [{"effective_max_running_requests_per_dp": per_dp} for _ in range(self.dp_size)],
        }

    def handle(self, path: str, body):
        if path in MEMORY or path in ("/update_weights_from_disk", "/load_lora_adapter"):
            self.log.append((path, body))  # the control calls, as the other stand-ins record them
        if path == "/load_lora_adapter":
            return self.load_lora_adapter(body)
        if path in COMMON:
            return common_call(self, path)
        if path in ("/server_info", "/get_server_info"):
            return 200, self.info()
        if path == "/sim_stats":
            return 200, self.stats()
        if path == "/update_weights_from_disk":
            if not Path(str(body.get("model_path"))).exists():
                return 400, {
                    "success": False,
                    "message": f"model path {body.get('model_path')} not found",
                    "num_paused_requests": 0,
                }
            time.sleep(self.refit_s)
            self.model_path, self.weight_version = body["model_path"], body.get("weight_version") or self.weight_version
            with self.cond:
                self.cache.clear()  # the update flushes the radix cache
            return 200, {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}
        if path == "/generate":
            if self.released:
                return 503, {"error": "memory released; call /resume_memory_occupation"}
            return self.generate(body)
        return 404, {"detail": "Not Found"}

    def stats(self) -> dict:
        with self.cond:
            return {
                "tokens": self.tokens,
                "steps": self.steps,
                "prefilled": self.prefilled,
                "busy_s": self.busy_s,
                "capacity": self.model.capacity,
                "model": asdict(self.model),
                "requests": len(self.requests),
                "open_requests": self.open_requests,
                "open_entries": len(self.waiting) + len(self.running),
                "now": time.monotonic(),
                "cpu_s": time.process_time(),
            }

    def load_lora_adapter(self, body: dict) -> tuple[int, dict]:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not self.enable_lora:
            error = "LoRA is not enabled. Please set `--enable-lora` to enable LoRA."
        elif name in self.adapters:
            error = f"Failed to load LoRA adapter {name} because it is already loaded"
        elif not Path(str(path)).exists():
            error = f"LoRA adapter path {path} not found"
        else:
            self.adapters[name] = path
            return 200, {"success": True, "error_message": None, "loaded_adapters": dict(self.adapters)}
        return 400, {"success": False, "error_message": error, "loaded_adapters": None}

    # -- /generate -------------------------------------------------------------------------
    def generate(self, body):
        lora = body.get("lora_path") if isinstance(body, dict) else None
        if lora is not None and not self.enable_lora:
            raise BadRequest(f"LoRA adapter '{lora}' was requested, but LoRA is not enabled.")
        if lora is not None and lora not in self.adapters:
            raise BadRequest(f"Got LoRA adapter that has never been loaded: {lora}")
        inputs, sps, single = generate_inputs(body, lambda t: [ord(c) % 50000 for c in t])
        rngs, entries, answers = [], [], []
        for i, (ids, sp) in enumerate(zip(inputs, sps)):
            for j in range(int(sp.get("n", 1))):
                if float(sp.get("temperature", 1.0)) == 0.0:  # greedy: the same answer every time
                    seed = 0
                elif self.deterministic and sp.get("sampling_seed") is not None:
                    seed = sp["sampling_seed"]
                else:  # sampling_seed ignored without --enable-deterministic-inference
                    seed = random.randrange(2**31)
                digest = hashlib.blake2b(
                    json.dumps([ids, seed, self.weight_version, lora, sp.get("regex")]).encode(), digest_size=8
                ).digest()
                rngs.append((i, j, random.Random(int.from_bytes(digest, "big"))))
        batch = _Batch(len(rngs))
        with self.cond:
            self.lora_samples[lora] = self.lora_samples.get(lora, 0) + len(rngs)
        blocks = [self._blocks(ids, lora) for ids in inputs]
        for i, j, rng in rngs:
            sp = sps[i]
            length = 1 if sp.get("regex") else self.model.length(rng, int(sp.get("max_new_tokens", 128)))
            entries.append(_Entry(blocks[i], length, batch))
            answers.append(self._answer(inputs[i], sp, rng, length, body, i, j))
        record = ["/generate", len(entries), time.monotonic(), None]
        with self.cond:
            if self.stopped or (
                self.die_after is not None and len(self.requests) >= self.die_after
            ):  # dying: no new work
                return None, None
            self.requests.append(record)
            self.open_requests += 1
            self.waiting.extend(entries)
            self.cond.notify_all()
            if self.die_after is not None and len(self.requests) >= self.die_after:
                threading.Thread(target=self.stop, daemon=True).start()
        batch.done.wait()
        with self.cond:
            self.open_requests -= 1
        if batch.error:
            return None, None
        record[3] = time.monotonic()
        return 200, answers[0] if single and len(answers) == 1 else answers

    def _answer(self, ids: list[int], sp: dict, rng: random.Random, length: int, body: dict, i: int, j: int) -> dict:
        max_new = int(sp.get("max_new_tokens", 128))
        meta = {
            "id": f"{i}-{j}",
            "prompt_tokens": len(ids),
            "completion_tokens": length,
            "cached_tokens": 0,
            "weight_version": self.weight_version,
        }
        if sp.get("regex"):
            options = [o.replace("\\", "") for o in sp["regex"].strip("()").split("|")]
            return {
                "text": rng.choice(options),
                "meta_info": dict(meta, finish_reason={"type": "stop", "matched": None}),
                "index": i,
            }
        text = " ".join(rng.choice(WORDS) for _ in range(length))
        finish = {"type": "length", "length": max_new} if length >= max_new else {"type": "stop", "matched": 2}
        meta["finish_reason"] = finish
        wanted = body.get("token_ids_logprob")
        if body.get("return_logprob") and wanted:
            ids_wanted = wanted[i] if isinstance(wanted[0], list) else wanted
            weights = [rng.random() + 0.05 for _ in ids_wanted]
            total = sum(weights) / 0.9  # 90% of the mass on the wanted tokens
            meta["output_token_ids_logprobs"] = [
                [[math.log(w / total), int(t), None] for w, t in zip(weights, ids_wanted)]
            ]
        return {"text": text, "meta_info": meta, "index": i}


class SimRouter(Served):
    """A gateway in front of workers (URLs): generation to the least-outstanding worker; with
    `rl`, smg's RL control plane (see the module docstring), else 404 on control paths."""

    SERVED = ("/generate", "/health", "/flush_cache", "/get_model_info", "/model_info")

    def __init__(self, worker_urls: list[str], *, rl: bool = False, port: int = 0):
        self.workers = [u.rstrip("/") for u in worker_urls]
        self.outstanding = {u: 0 for u in self.workers}
        self.rl, self.lock, self.local = rl, threading.Lock(), threading.local()
        self.log: list[tuple[str, dict | None]] = []
        router = self

        class Handler(JsonHandler):
            def _route(self, body):
                router.log.append((self.path, body))
                status, payload = router.handle(self.path, body)
                self._reply(status, payload)

        self._serve(port, Handler)

    def _forward(self, url: str, path: str, body, method: str | None = None):
        """One call to a worker on this handler thread's kept-alive connection to it (as a gateway pools them)."""
        conns = self.local.__dict__.setdefault("conns", {})
        if url not in conns:
            conns[url] = HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=600)
        conn = conns[url]
        try:
            conn.request(
                method or ("POST" if body is not None else "GET"),
                path,
                body=json.dumps(body).encode() if body is not None else None,
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            raw = resp.read()
        except BaseException:
            conn.close()
            raise
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def handle(self, path: str, body):
        parsed = urllib.parse.urlsplit(path)
        if parsed.path in self.SERVED:
            n = _samples(body) if parsed.path == "/generate" else 0
            with self.lock:
                url = min(self.workers, key=lambda u: self.outstanding[u])
                self.outstanding[url] += n
            try:
                return self._forward(url, path, body)
            except OSError as e:
                return 502, {"error": f"worker {url} failed: {e}"}
            finally:
                with self.lock:
                    self.outstanding[url] -= n
        if not self.rl or not parsed.path.startswith("/v1/rl/"):
            return 404, {"detail": "Not Found"}
        ids = {f"w{i}": u for i, u in enumerate(self.workers)}
        if parsed.path == "/v1/rl/workers":
            return 200, {
                "workers": [
                    {
                        "id": wid,
                        "url": u,
                        "base_url": u,
                        "engine": "sglang",
                        "dp_size": None,
                        "dp_ranks": 1,
                        "health": "healthy",
                        "labels": {"engine": "sglang"},
                    }
                    for wid, u in ids.items()
                ]
            }
        parts = parsed.path.split("/")  # /v1/rl/workers/{id}/engine/{path} or /v1/rl/engine/{path}
        if parts[3] == "workers" and len(parts) > 6 and parts[5] == "engine" and parts[4] in ids:
            return 200, self._call(parts[4], ids[parts[4]], "/" + "/".join(parts[6:]), body)
        if parts[3] == "engine":
            if "selector" not in urllib.parse.parse_qs(parsed.query):  # smg/rl.py:211 always sends one
                return 400, {"error": "bad_request", "message": "missing selector"}
            results, failed = {}, []
            for wid, url in ids.items():
                try:
                    results[wid] = self._call(wid, url, "/" + "/".join(parts[4:]), body)
                except OSError as e:
                    failed.append(
                        {"worker_id": wid, "url": url, "status": None, "error": "unreachable", "message": str(e)}
                    )
            return (207 if failed else 200), {
                "results": results,
                "failed": failed,
                "total": len(ids),
                "succeeded": len(results),
            }
        return 404, {"detail": "Not Found"}

    def _call(self, wid: str, url: str, path: str, body) -> dict:
        t0 = time.monotonic()
        status, payload = self._forward(
            url, path, body if body is not None else None, method="POST" if body is not None else "GET"
        )
        return {
            "worker_id": wid,
            "url": url,
            "status": status,
            "latency_ms": int(1000 * (time.monotonic() - t0)),
            "body": payload,
        }


def _samples(body) -> int:
    """Samples a /generate body asks for (0 for a malformed one: the worker answers it)."""
    try:
        _, sps, _ = generate_inputs(body, lambda text: [0])
    except BadRequest:
        return 0
    return sum(int(sp.get("n", 1)) for sp in sps)


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mrtk.bench.serving_sim")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--slots", type=int, default=LatencyModel.slots)
    p.add_argument("--step-ms", type=float, default=LatencyModel.step_s * 1000)
    p.add_argument("--dp-size", type=int, default=1)
    p.add_argument("--weight-version", default="M1")
    p.add_argument("--router", nargs="*", help="worker URLs: run a router in front of them instead of a server")
    p.add_argument("--rl", action="store_true", help="with --router: serve smg's RL control plane")
    a = p.parse_args(argv)
    sys.setswitchinterval(0.0005)  # the scheduler thread keeps its step time while handler threads parse JSON
    if a.router is not None:
        served = SimRouter(a.router, rl=a.rl, port=a.port)
    else:
        served = SimServer(
            LatencyModel(slots=a.slots, step_s=a.step_ms / 1000),
            a.port,
            weight_version=a.weight_version,
            dp_size=a.dp_size,
        )
    with served:
        print(served.url, flush=True)
        served.thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
