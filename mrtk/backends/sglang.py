"""The SGLang backend: the policy served by SGLang (0.5.3 or newer), spoken to over HTTP only.

mrtk never imports `sglang` (it pins its own torch and needs CUDA; it belongs in its own
environment, `sglang.python`). It either launches `python -m sglang.launch_server` as a child
process it health-checks, logs and always stops, or attaches to servers the user runs (a list
of URLs, or an SGLang router URL plus `sglang.worker_urls`) and never stops them. At attach it
reads each server's `/server_info` and refuses one older than 0.5.3. Requests use SGLang's
native `POST /generate` with `input_ids` (never `text`: the server would add a second BOS) and
one entry per sample with its own `sampling_seed`; answers come back in input order.

Seeds: SGLang honours `sampling_seed` only when the server runs with
`--enable-deterministic-inference` (sampling_batch_info.py:157-171 in 0.5.23); mrtk launches
with it when `sglang.deterministic` is true and records on the run whether the attached or
launched servers honour seeds. Without it the samples are still independent, only not
reproducible.

Programs, as the embedded backend's:
- plain sampling: one entry per sample; the radix cache prefills a prompt once for its samples;
- structured judge / meta-judge: the justification with the stop strings, then one more call
  per sample on prompt + justification + suffix with `max_new_tokens: 1`, `return_logprob`
  and `token_ids_logprob` = the choice tokens, read from `output_token_ids_logprobs` (the
  shared prefix is a radix-cache hit). A choice that is not one token (e.g. "10") is instead
  generated under SGLang's `regex` constraint and counts as probability 1.

Weights: between iterations the loop calls `release()` before DPO (`/release_memory_occupation`,
the GPU memory goes to training), then `resume()` and `update_weights(path, version)`
(`/update_weights_from_disk` with `weight_version`; it flushes the radix cache itself), all
sent to every worker. Every answer's `meta_info.weight_version` is checked against the
version the loop expects. Transient HTTP errors and timeouts are retried with backoff, across
servers when there are several; a server that stays down is a one-line MrtkError, and
`mrtk run --resume` continues. A body that is not JSON (`/flush_cache` answers plain text)
never crashes the client.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import shutil
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
MIN_VERSION = (0, 5, 3)  # `sampling_seed` exists from 0.5.3 (sglang/srt/sampling/sampling_params.py)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3]) or (0,)


class ServerError(Exception):
    """An HTTP answer that retrying will not fix (4xx other than 408/429)."""


def launch_command(model_path: str, cfg, weight_version: str | None = None) -> list[str]:
    """The `sglang.launch_server` command line for a config's `sglang` section."""
    python = cfg.python or shutil.which("python") or sys.executable  # SGLang lives in its own environment
    cmd = [python, "-m", "sglang.launch_server", "--model-path", _absolute(model_path), "--host", cfg.host,
           "--port", str(cfg.port), "--tp-size", str(cfg.tp_size), "--dp-size", str(cfg.dp_size),
           "--mem-fraction-static", str(cfg.mem_fraction_static)]
    if cfg.enable_memory_saver:
        cmd.append("--enable-memory-saver")
    if cfg.deterministic:
        cmd.append("--enable-deterministic-inference")  # else sampling_seed is ignored
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
            raise MrtkError(f"cannot start SGLang ({e.strerror}: {self.cmd[0]}); set sglang.python to the interpreter of the environment "
                           "where sglang is installed, or attach with sglang.url (README: Run on GPUs with SGLang)") from None
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
            return resp.status, _payload(resp.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")[:300]
        if e.code in RETRY_STATUS:
            raise ConnectionError(f"HTTP {e.code}: {text}") from None
        raise ServerError(f"HTTP {e.code} from {url}: {' '.join(text.split())}") from None


def _payload(raw: bytes):
    """A response body: JSON where it is JSON, else its text (`/flush_cache` answers plain text,
    sglang/srt/entrypoints/http_server.py:1025-1040 in 0.5.23)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


class SGLangClient:
    """Generation spread round-robin over one or more servers (or one router), control calls
    (memory release/resume, weight updates) sent to every worker, all retried with backoff.

    `worker_urls`: where control calls go when `urls` is an SGLang router, which serves
    generation only (sglang-router 0.3.2 has no weight-update or memory endpoints); default:
    the servers in `urls` themselves."""

    def __init__(self, urls: list[str], *, worker_urls: list[str] | None = None, timeout_s: float = 600.0, retries: int = 4,
                 backoff_s: float = 1.0):
        if not urls:
            raise MrtkError("sglang: no server URL; set sglang.urls or sglang.launch: true")
        self.urls = [u.rstrip("/") for u in urls]
        self.worker_urls = [u.rstrip("/") for u in worker_urls] if worker_urls else self.urls
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._next = itertools.cycle(range(len(self.urls)))

    def call(self, path: str, body: dict | None = None, *, every: bool = False, method: str | None = None):
        """POST (or GET without a body) `path` to the next server; with `every`, to every worker
        (weight updates, memory). Either way a failed try is retried with backoff."""
        if every:
            return [self._retrying(lambda u=u: u, path, body, method) for u in self.worker_urls]
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
        try:
            status, payload = _request(url + path, body, self.timeout_s, method)
        except ServerError as e:
            if "HTTP 404" in str(e) and path != "/generate":
                raise MrtkError(f"{url} has no {path} (HTTP 404): an SGLang router serves generation only; list its workers "
                                "in sglang.worker_urls so control calls reach them") from None
            raise MrtkError(f"SGLang refused {path}: {e}") from None
        return payload

    def server_info(self, url: str) -> dict:
        """`/server_info` (0.5.x; `/get_server_info` in older releases), or {} if neither answers."""
        for path in ("/server_info", "/get_server_info"):
            try:
                status, payload = _request(url + path, None, self.timeout_s)
            except ServerError:
                continue
            except OSError as e:
                raise MrtkError(f"SGLang at {url} does not answer ({e}); start it or fix sglang.urls") from None
            if isinstance(payload, dict):
                return payload
        return {}

    def check_servers(self) -> dict:
        """Refuse servers older than MIN_VERSION (no `sampling_seed` before 0.5.3: every request
        would be HTTP 500); returns what the run records: versions and whether seeds are honoured
        (only with --enable-deterministic-inference, sampling_batch_info.py:157-171)."""
        infos = {u: self.server_info(u) for u in self.worker_urls}
        for url, info in infos.items():
            if not info:
                hint = " (an SGLang router? list its workers in sglang.worker_urls)" if self.worker_urls == self.urls else ""
                raise MrtkError(f"{url} answers neither /server_info nor /get_server_info, so it is no SGLang server mrtk can "
                                f"check{hint}")
            got = str(info.get("version", "0"))
            if _version_tuple(got) < MIN_VERSION:
                raise MrtkError(f"SGLang {got} at {url} is older than {'.'.join(map(str, MIN_VERSION))} (no sampling_seed); "
                                f"upgrade it: pip install 'sglang>={'.'.join(map(str, MIN_VERSION))}'")
        deterministic = all(bool(i.get("enable_deterministic_inference")) for i in infos.values())
        return {"versions": {u: i.get("version") for u, i in infos.items()}, "deterministic": deterministic,
                "seeds_honoured": deterministic, "urls": self.urls, "worker_urls": self.worker_urls}


class SGLangBackend:
    name = "sglang"

    def __init__(self, client: SGLangClient, tokenizer, *, weight_version: str | None = None, max_batch_rows: int = 256):
        self.client, self.tok = client, tokenizer
        self.weight_version = weight_version
        self.max_batch_rows = max_batch_rows

    # -- tokens --------------------------------------------------------------------------
    def chat_ids(self, prompt: str) -> list[int]:
        """The prompt as token ids, counted the way mrtk counts and TRL trains. Sent as `input_ids`:
        SGLang tokenizes `text` with add_special_tokens=True (tokenizer_manager.py:1068 in 0.5.23),
        which would put a second BOS before a Llama-3 chat template's own <|begin_of_text|>."""
        return chat_token_ids(self.tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)

    # -- generation ------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], params: SamplingParams, *, suffix: str | None = None,
                 choices: dict[str, str] | None = None, on_progress: Progress | None = None) -> list[list[Generation]]:
        results: list[list[Generation]] = []
        per_call = max(1, self.max_batch_rows // max(1, len(requests[0].seeds))) if requests else 1
        for start in range(0, len(requests), per_call):
            chunk = requests[start:start + per_call]
            t0 = time.perf_counter()
            prompt_ids = [self.chat_ids(r.prompt) for r in chunk]
            gens = self._sample(chunk, prompt_ids, params)
            if suffix is not None and choices:
                self._score(prompt_ids, gens, suffix, choices)
            per_row = (time.perf_counter() - t0) / max(1, sum(len(g) for g in gens))
            for row in gens:
                for g in row:
                    g.latency_s = per_row
            results += gens
            if on_progress:
                on_progress(sum(len(r.seeds) for r in chunk))
        return results

    def _sampling(self, params: SamplingParams, seed: int) -> dict:
        body = {"temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens,
                "n": 1, "sampling_seed": int(seed) % (2**31)}
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _sample(self, chunk: Sequence[Request], prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Generation]]:
        """One request entry per sample, each with its own seed. Not `n: K`: the K copies of one
        entry share one sampling-params object, and with deterministic inference the seeded
        sampler hashes only (seed, position), so all K samples would be the same text. The
        radix cache still prefills a prompt once for its K entries."""
        body = {"input_ids": [ids for ids, r in zip(prompt_ids, chunk) for _ in r.seeds],
                "sampling_params": [self._sampling(params, seed) for r in chunk for seed in r.seeds]}
        answers = iter(self._generate(body, len(body["input_ids"])))
        out = []
        for r in chunk:  # answers come back in input order
            row = []
            for _ in r.seeds:
                a = next(answers)
                text, finish = _strip_stop(a["text"], params.stop), a["meta_info"]["finish_reason"]
                kind = {"stop": "stop" if params.stop and _matched_stop(finish, params.stop) else "eos", "length": "length"}.get(finish["type"], finish["type"])
                row.append(Generation(text, int(a["meta_info"].get("completion_tokens", 0)), kind, 0.0))
            out.append(row)
        return out

    def _score(self, prompt_ids: list[list[int]], gens: list[list[Generation]], suffix: str, choices: dict[str, str]) -> None:
        ids = {label: self.tok(piece, add_special_tokens=False)["input_ids"] for label, piece in choices.items()}
        inputs = [p + self.tok(g.text + suffix, add_special_tokens=False)["input_ids"] for p, row in zip(prompt_ids, gens) for g in row]
        flat = [g for row in gens for g in row]
        if all(len(v) == 1 for v in ids.values()):
            token_ids = [v[0] for v in ids.values()]
            body = {"input_ids": inputs, "sampling_params": [{"max_new_tokens": 1, "temperature": 0.0} for _ in inputs],
                    "return_logprob": True, "logprob_start_len": -1, "token_ids_logprob": [token_ids for _ in inputs]}
            for g, a in zip(flat, self._generate(body, len(inputs))):
                entries = (a["meta_info"].get("output_token_ids_logprobs") or [[]])[0] or []
                by_id = {int(e[1]): math.exp(e[0]) for e in entries if e and e[0] is not None}
                g.choice_probs = {label: by_id.get(v[0], 0.0) for label, v in ids.items()}
        else:  # a choice of several tokens: constrain the answer to the choices, probability 1 on the one generated
            pattern = "(" + "|".join(re.escape(p) for p in sorted(choices.values(), key=len, reverse=True)) + ")"
            body = {"input_ids": inputs, "sampling_params": [{"max_new_tokens": 8, "temperature": 0.0, "regex": pattern} for _ in inputs]}
            for g, a in zip(flat, self._generate(body, len(inputs))):
                got = a["text"].strip()
                g.choice_probs = {label: float(piece.strip() == got) for label, piece in choices.items()}

    def _generate(self, body: dict, expect: int) -> list[dict]:
        answers = self.client.call("/generate", body)
        answers = answers if isinstance(answers, list) else [answers]
        if not all(isinstance(a, dict) and isinstance(a.get("meta_info"), dict) for a in answers):
            raise MrtkError(f"SGLang answered /generate with {str(answers[0])[:80]!r}, not generations; is the URL an SGLang server?")
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
        """Load `model_path` into every worker. The update flushes the radix cache itself
        (`UpdateWeightFromDiskReqInput.flush_cache: bool = True`, io_struct.py), so no /flush_cache."""
        model_path = _absolute(model_path)  # the server has its own working directory
        for answer in self.client.call("/update_weights_from_disk", {"model_path": str(model_path), "weight_version": version}, every=True):
            if not isinstance(answer, dict) or not answer.get("success", False):
                message = answer.get("message") if isinstance(answer, dict) else answer
                raise MrtkError(f"SGLang could not load {model_path}: {message}; check the saved model")
        self.weight_version = version


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


class SGLangPolicy:
    """A run's SGLang serving (see `mrtk.backends.open_policy`): launched on the first model it
    is asked for (and stopped by `close()`), or attached to `cfg.urls` (never stopped). At attach
    the servers' versions are checked; `serving` holds what the run records (versions, whether
    seeds are honoured). A new model is loaded in place with a weight update."""

    def __init__(self, cfg, run_dir: Path, tokenizer_for, info=lambda text: None, on_serving=lambda serving: None):
        self.cfg, self.run_dir, self.tokenizer_for, self.info, self.on_serving = cfg, Path(run_dir), tokenizer_for, info, on_serving
        self.backend: SGLangBackend | None = None
        self.model_dir: str | None = None
        self.server: Server | None = None
        self.serving: dict | None = None

    def use(self, model_dir: str) -> SGLangBackend:
        from mrtk.backends import model_version

        s, version = self.cfg, model_version(model_dir)
        if self.backend is None:
            urls = s.urls
            if s.launch:
                url = f"http://{s.host}:{s.port}"
                self.server = Server(launch_command(model_dir, s, version), url, self.run_dir / "sglang.log", s.startup_timeout_s)
                self.server.__enter__()
                urls, self.model_dir = [url], model_dir
            client = SGLangClient(urls, worker_urls=None if s.launch else s.worker_urls, timeout_s=s.request_timeout_s, retries=s.retries)
            self.serving = client.check_servers()
            self.on_serving(self.serving)
            if not self.serving["seeds_honoured"]:
                self.info("SGLang ignores sampling_seed on these servers (no --enable-deterministic-inference): samples are "
                          "independent but not reproducible; recorded on the run (runs.serving)")
            self.backend = SGLangBackend(client, self.tokenizer_for(model_dir), weight_version=version if s.launch else None,
                                         max_batch_rows=s.max_batch_rows)
        if self.model_dir != model_dir:
            self.backend.update_weights(model_dir, version)  # flushes the radix cache too
            self.model_dir = model_dir
        return self.backend

    def release(self) -> None:
        """The server's GPU memory goes to training (it keeps its weights)."""
        if self.backend is not None:
            self.backend.release()

    def resume(self) -> None:
        if self.backend is not None:
            self.backend.resume()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def generation_dtype(self) -> tuple[None, str]:
        return None, "served by SGLang (the server's --dtype)"
