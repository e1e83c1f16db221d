"""The SGLang backend: the policy served by SGLang, spoken to over HTTP only.

mrtk never imports `sglang` (it pins its own torch and needs CUDA). It either launches
`python -m sglang.launch_server` as a child process it health-checks, logs and always stops,
or attaches to servers the user runs (a list of URLs, or an SGLang router URL) and never
stops them. Requests use SGLang's native `POST /generate` (sglang 0.5.x: `text` and
`sampling_params` as lists, answered as a list in input order; with `n > 1` the n samples of
each prompt are grouped together).

Programs, as the embedded backend's:
- plain sampling: `n` samples per prompt with `sampling_seed` (the prompt's first seed), so the
  server's radix cache prefills each prompt once for its n samples;
- structured judge / meta-judge: the justification with the stop strings, then one more call
  per sample on prompt + justification + suffix with `max_new_tokens: 1`, `return_logprob`
  and `token_ids_logprob` = the choice tokens, read from `output_token_ids_logprobs` (the
  shared prefix is a radix-cache hit). A choice that is not one token (e.g. "10") is instead
  generated under SGLang's `regex` constraint and counts as probability 1.

Weights: between iterations the loop calls `release()` before DPO (`/release_memory_occupation`,
the GPU memory goes to training), then `resume()`, `update_weights(path, version)`
(`/update_weights_from_disk` with `weight_version`) and `flush()` (`/flush_cache`). Every
answer's `meta_info.weight_version` is checked against the version the loop expects.
Transient HTTP errors and timeouts are retried with backoff, across servers when there are
several; a server that stays down is a one-line MrtkError, and `mrtk run --resume` continues.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from mrtk.backends.base import Generation, Progress, Request, SamplingParams
from mrtk.errors import MrtkError
from mrtk.models import chat_token_ids

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class ServerError(Exception):
    """An HTTP answer that retrying will not fix (4xx other than 408/429)."""


def launch_command(model_path: str, cfg, weight_version: str | None = None) -> list[str]:
    """The `sglang.launch_server` command line for a config's `sglang` section."""
    cmd = [cfg.python or sys.executable, "-m", "sglang.launch_server", "--model-path", _absolute(model_path), "--host", cfg.host,
           "--port", str(cfg.port), "--tp-size", str(cfg.tp_size), "--dp-size", str(cfg.dp_size),
           "--mem-fraction-static", str(cfg.mem_fraction_static)]
    if cfg.enable_memory_saver:
        cmd.append("--enable-memory-saver")
    if weight_version or cfg.weight_version:
        cmd += ["--weight-version", weight_version or cfg.weight_version]
    return cmd + shlex.split(cfg.extra_args or "")


class Server:
    """A launched SGLang server: a child process in its own process group, its log in a file,
    stopped on exit whatever happens (context manager; also on SIGTERM via the loop's handler)."""

    def __init__(self, cmd: list[str], url: str, log_path: Path, startup_timeout_s: float):
        self.cmd, self.url, self.log_path, self.startup_timeout_s = cmd, url, Path(log_path), startup_timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError as e:
            raise MrtkError(f"cannot start SGLang ({e.strerror}: {self.cmd[0]}); install it (pip install 'mrtk[sglang]') or attach with sglang.urls") from None
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise MrtkError(f"SGLang exited with code {self.proc.returncode} while starting; see {self.log_path}")
            try:
                if _request(self.url + "/health", None, timeout=5.0)[0] == 200:
                    return self
            except (OSError, ServerError):
                pass
            time.sleep(1.0)
        self.stop()
        raise MrtkError(f"SGLang did not become healthy within {self.startup_timeout_s:.0f}s; see {self.log_path} (raise sglang.startup_timeout_s)")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


def _request(url: str, body: dict | None, timeout: float, method: str | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if body is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")[:300]
        if e.code in RETRY_STATUS:
            raise ConnectionError(f"HTTP {e.code}: {text}") from None
        raise ServerError(f"HTTP {e.code} from {url}: {' '.join(text.split())}") from None


class SGLangClient:
    """Requests spread round-robin over one or more servers (or one router), retried with backoff."""

    def __init__(self, urls: list[str], *, timeout_s: float = 600.0, retries: int = 4, backoff_s: float = 1.0):
        if not urls:
            raise MrtkError("sglang: no server URL; set sglang.urls or sglang.launch: true")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._next = itertools.cycle(range(len(self.urls)))
        self.log: list[tuple[str, str, dict | None]] = []  # (url, path, body): what was sent, for tests and debugging

    def call(self, path: str, body: dict | None = None, *, every: bool = False, method: str | None = None):
        """POST (or GET without a body) `path` to the next server; with `every`, to every server
        (weight updates). Either way a failed try is retried with backoff."""
        if every:
            return [self._retrying(lambda u=u: u, path, body, method) for u in self.urls]
        return self._retrying(lambda: self.urls[next(self._next)], path, body, method)

    def _retrying(self, pick_url, path, body, method):
        for attempt in range(self.retries + 1):
            url = pick_url()
            try:
                return self._send(url, path, body, method)
            except (OSError, ConnectionError) as e:  # refused, reset, timed out, 5xx/429: another try
                last = f"{url}: {e}"
                time.sleep(self.backoff_s * 2 ** attempt)
        raise MrtkError(f"SGLang did not answer {path} after {self.retries + 1} tries ({last}); finished rows are saved, "
                        "fix the server and run: mrtk run --resume RUN")

    def _send(self, url, path, body, method):
        self.log.append((url, path, body))
        try:
            status, payload = _request(url + path, body, self.timeout_s, method)
        except ServerError as e:
            raise MrtkError(f"SGLang refused {path}: {e}") from None
        return payload


class SGLangBackend:
    name = "sglang"

    def __init__(self, client: SGLangClient, tokenizer, *, weight_version: str | None = None, max_batch_rows: int = 256):
        self.client, self.tok = client, tokenizer
        self.weight_version = weight_version
        self.max_batch_rows = max_batch_rows

    # -- tokens --------------------------------------------------------------------------
    def chat_text(self, prompt: str) -> str:
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)

    def count_tokens(self, prompt: str) -> int:
        return len(chat_token_ids(self.tok, [{"role": "user", "content": prompt}], add_generation_prompt=True))

    # -- generation ------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], params: SamplingParams, *, suffix: str | None = None,
                 choices: dict[str, str] | None = None, on_progress: Progress | None = None) -> list[list[Generation]]:
        results: list[list[Generation]] = []
        per_call = max(1, self.max_batch_rows // max(1, len(requests[0].seeds))) if requests else 1
        for start in range(0, len(requests), per_call):
            chunk = requests[start:start + per_call]
            t0 = time.perf_counter()
            gens = self._sample(chunk, params)
            if suffix is not None and choices:
                self._score(chunk, gens, suffix, choices)
            per_row = (time.perf_counter() - t0) / max(1, sum(len(g) for g in gens))
            for row in gens:
                for g in row:
                    g.latency_s = per_row
            results += gens
            if on_progress:
                on_progress(sum(len(r.seeds) for r in chunk))
        return results

    def _sampling(self, params: SamplingParams, n: int, seed: int) -> dict:
        body = {"temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens,
                "n": n, "sampling_seed": int(seed) % (2**31)}
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _sample(self, chunk: Sequence[Request], params: SamplingParams) -> list[list[Generation]]:
        body = {"text": [self.chat_text(r.prompt) for r in chunk],
                "sampling_params": [self._sampling(params, len(r.seeds), r.seeds[0]) for r in chunk]}
        answers = self._generate(body, sum(len(r.seeds) for r in chunk))
        out, it = [], iter(answers)
        for r in chunk:  # n samples of a prompt come back together, prompts in input order
            row = []
            for _ in r.seeds:
                a = next(it)
                text, finish = _strip_stop(a["text"], params.stop), a["meta_info"]["finish_reason"]
                kind = {"stop": "stop" if params.stop and _matched_stop(finish, params.stop) else "eos", "length": "length"}.get(finish["type"], finish["type"])
                row.append(Generation(text, int(a["meta_info"].get("completion_tokens", 0)), kind, 0.0))
            out.append(row)
        return out

    def _score(self, chunk: Sequence[Request], gens: list[list[Generation]], suffix: str, choices: dict[str, str]) -> None:
        ids = {label: self.tok(piece, add_special_tokens=False)["input_ids"] for label, piece in choices.items()}
        texts = [self.chat_text(r.prompt) + g.text + suffix for r, row in zip(chunk, gens) for g in row]
        flat = [g for row in gens for g in row]
        if all(len(v) == 1 for v in ids.values()):
            token_ids = [v[0] for v in ids.values()]
            body = {"text": texts, "sampling_params": [{"max_new_tokens": 1, "temperature": 0.0} for _ in texts],
                    "return_logprob": True, "logprob_start_len": -1, "token_ids_logprob": [token_ids for _ in texts]}
            for g, a in zip(flat, self._generate(body, len(texts))):
                entries = (a["meta_info"].get("output_token_ids_logprobs") or [[]])[0] or []
                by_id = {int(e[1]): math.exp(e[0]) for e in entries if e and e[0] is not None}
                g.choice_probs = {label: by_id.get(v[0], 0.0) for label, v in ids.items()}
        else:  # a choice of several tokens: constrain the answer to the choices, probability 1 on the one generated
            pattern = "(" + "|".join(re.escape(p) for p in sorted(choices.values(), key=len, reverse=True)) + ")"
            body = {"text": texts, "sampling_params": [{"max_new_tokens": 8, "temperature": 0.0, "regex": pattern} for _ in texts]}
            for g, a in zip(flat, self._generate(body, len(texts))):
                got = a["text"].strip()
                g.choice_probs = {label: float(piece.strip() == got) for label, piece in choices.items()}

    def _generate(self, body: dict, expect: int) -> list[dict]:
        answers = self.client.call("/generate", body)
        answers = answers if isinstance(answers, list) else [answers]
        if len(answers) != expect:
            raise MrtkError(f"SGLang answered {len(answers)} generations for {expect} requested; is the URL an SGLang /generate server?")
        if self.weight_version:
            wrong = [a["meta_info"].get("weight_version") for a in answers if a["meta_info"].get("weight_version") not in (None, self.weight_version)]
            if wrong:
                raise MrtkError(f"SGLang served weight version {wrong[0]!r}, the loop expects {self.weight_version!r}; "
                                "another client updated the weights? run: mrtk run --resume RUN")
        return answers

    # -- weights ----------------------------------------------------------------------------
    def release(self) -> None:
        self.client.call("/release_memory_occupation", {}, every=True)

    def resume(self) -> None:
        self.client.call("/resume_memory_occupation", {}, every=True)

    def update_weights(self, model_path: str, version: str) -> None:
        model_path = _absolute(model_path)  # the server has its own working directory
        for answer in self.client.call("/update_weights_from_disk", {"model_path": str(model_path), "weight_version": version}, every=True):
            if not (answer or {}).get("success", False):
                raise MrtkError(f"SGLang could not load {model_path}: {(answer or {}).get('message')}; check the saved model")
        self.weight_version = version

    def flush(self) -> None:
        self.client.call("/flush_cache", {}, every=True)


def _absolute(model_path: str) -> str:
    """A local model directory as an absolute path; a hub id as it is."""
    path = Path(model_path).expanduser()
    return str(path.resolve()) if path.exists() else model_path


def _matched_stop(finish: dict, stops) -> bool:
    return isinstance(finish.get("matched"), str) and finish["matched"] in stops


def _strip_stop(text: str, stops) -> str:
    """SGLang trims the stop string itself (no_stop_trim false); cut anything from a stop on, in case."""
    cut = min((i for i in (text.find(s) for s in stops or ()) if i >= 0), default=len(text))
    return text[:cut]
