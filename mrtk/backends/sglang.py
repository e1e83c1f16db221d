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

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from mrtk.backends.base import Generation, Progress, Request, SamplingParams
from mrtk import faults
from mrtk.errors import MrtkError
from mrtk.models import PrefixEncoder, chat_token_ids

from mrtk.backends.sglang_client import SGLangClient
from mrtk.backends.sglang_http import TRANSIENT, ServerError, _request


def launch_command(
    model_path: str, cfg, weight_version: str | None = None, lora: tuple[int, list[str]] | None = None
) -> list[str]:
    """The `sglang.launch_server` command line for a config's `sglang` section; `lora`: (the largest
    adapter rank, the target modules) for servers that load adapters (sglang.weight_sync: lora)."""
    python = cfg.python or shutil.which("python") or sys.executable  # SGLang lives in its own environment
    cmd = [
        python,
        "-m",
        "sglang.launch_server",
        "--model-path",
        _absolute(model_path),
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--tp-size",
        str(cfg.tp_size),
        "--dp-size",
        str(cfg.dp_size),
        "--mem-fraction-static",
        str(cfg.mem_fraction_static),
    ]
    if cfg.enable_memory_saver:
        cmd.append("--enable-memory-saver")
    if cfg.deterministic:
        cmd.append("--enable-deterministic-inference")  # else sampling_seed is ignored
    if weight_version or cfg.weight_version:
        cmd += ["--weight-version", weight_version or cfg.weight_version]
    if lora:  # lora_paths need not be given at launch when both of these are (lora_manager.py:715)
        cmd += ["--enable-lora", "--max-lora-rank", str(lora[0]), "--lora-target-modules", *lora[1]]
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
            raise MrtkError(
                f"cannot start SGLang ({e.strerror}: {self.cmd[0]}); set sglang.python to the interpreter of the environment "
                "where sglang is installed, or attach with sglang.url (README: Run on GPUs with SGLang)"
            ) from None
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise MrtkError(f"SGLang exited with code {self.proc.returncode} while starting; see {self.log_path}")
            try:
                if _request(self.url, "/health", None, timeout=5.0)[0] == 200:
                    return self
            except (*TRANSIENT, ServerError):  # not up yet
                pass
            time.sleep(1.0)
        self.stop()
        raise MrtkError(
            f"SGLang did not become healthy within {self.startup_timeout_s:.0f}s; see {self.log_path} (raise sglang.startup_timeout_s)"
        )

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


class SGLangBackend:
    name = "sglang"

    def __init__(
        self, client: SGLangClient, tokenizer, *, weight_version: str | None = None, max_batch_rows: int = 256
    ):
        self.client, self.tok = client, tokenizer
        self.weight_version = weight_version
        self.adapter: str | None = None  # the loaded LoRA adapter every request names (None: the base model)
        self.loaded: set[str] = set()
        self.max_batch_rows = max_batch_rows
        self.tok_lock = threading.Lock()  # a fast tokenizer is one Rust object: one thread in it at a time
        self.encoder = PrefixEncoder(tokenizer)  # a stage's prompts share their template's start: tokenized once
        self.choice_ids: dict[tuple, dict[str, list[int]]] = {}  # a program's choices, tokenized once

    def window(self) -> int:
        """Samples the servers take in flight together (callers keep that many requests going)."""
        return self.client.window()

    # -- tokens --------------------------------------------------------------------------
    def chat_ids(self, prompt: str) -> list[int]:
        """The prompt as token ids, counted the way mrtk counts and TRL trains. Sent as `input_ids`:
        SGLang tokenizes `text` with add_special_tokens=True (tokenizer_manager.py:1068 in 0.5.23),
        which would put a second BOS before a Llama-3 chat template's own <|begin_of_text|>."""
        with self.tok_lock:
            return chat_token_ids(
                self.tok, [{"role": "user", "content": prompt}], add_generation_prompt=True, encoder=self.encoder
            )

    def _ids(self, text: str) -> list[int]:
        with self.tok_lock:
            return self.tok(text, add_special_tokens=False)["input_ids"]

    # -- generation ------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[Request],
        params: SamplingParams,
        *,
        suffix: str | None = None,
        choices: dict[str, str] | None = None,
        on_progress: Progress | None = None,
    ) -> list[list[Generation]]:
        """The requests as /generate batches of at most `max_batch_rows` samples (a prompt's K
        samples stay in one: the radix cache prefills the prompt once), one after another; a
        structured program sends a batch's scoring request as soon as its texts return. Answers
        keep the requests' order. Requests in flight come from the callers: `lanes.run_chunks`
        calls with one prompt (or one response's battles) from as many threads as `window()` fills."""
        batches, current, size = [], [], 0
        for r in requests:
            for start in range(0, len(r.seeds), self.max_batch_rows):  # only a K above max_batch_rows is split
                part = Request(r.prompt, r.seeds[start : start + self.max_batch_rows])
                if current and size + len(part.seeds) > self.max_batch_rows:
                    batches.append(current)
                    current, size = [], 0
                current.append(part)
                size += len(part.seeds)
        if current:
            batches.append(current)

        def one(batch: list[Request]) -> list[list[Generation]]:
            t0 = time.perf_counter()
            ids = [self.chat_ids(r.prompt) for r in batch]
            gens = self._sample(batch, ids, params)
            if suffix is not None and choices:
                self._score(ids, gens, suffix, choices)
            per = (time.perf_counter() - t0) / max(1, sum(len(g) for g in gens))
            for row in gens:
                for g in row:
                    g.latency_s = per
            faults.point("generate.batch")  # a crash point of the kill -9 trials, once per answered batch
            if on_progress:
                on_progress(sum(len(r.seeds) for r in batch))
            return gens

        rows = [row for b in batches for row in one(b)]
        out, it = [], iter(rows)  # rejoin a request split over batches
        for r in requests:
            row = []
            while len(row) < len(r.seeds):
                row += next(it)
            out.append(row)
        return out

    def _sampling(self, params: SamplingParams, seed: int) -> dict:
        body = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "n": 1,
            "sampling_seed": int(seed) % (2**31),
        }
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _sample(
        self, batch: list[Request], prompt_ids: list[list[int]], params: SamplingParams
    ) -> list[list[Generation]]:
        """One request entry per sample, each with its own seed. Not `n: K`: the K copies of one
        entry share one sampling-params object, and with deterministic inference the seeded
        sampler hashes only (seed, position), so all K samples would be the same text. The
        radix cache still prefills a prompt once for its K entries."""
        body = {
            "input_ids": [ids for ids, r in zip(prompt_ids, batch) for _ in r.seeds],
            "sampling_params": [self._sampling(params, seed) for r in batch for seed in r.seeds],
        }
        answers = iter(self._generate(body, len(body["input_ids"])))
        out = []
        for r in batch:  # answers come back in input order
            row = []
            for _ in r.seeds:
                a = next(answers)
                text, finish = _strip_stop(a["text"], params.stop), a["meta_info"]["finish_reason"]
                kind = {
                    "stop": "stop" if params.stop and _matched_stop(finish, params.stop) else "eos",
                    "length": "length",
                }.get(finish["type"], finish["type"])
                row.append(Generation(text, int(a["meta_info"].get("completion_tokens", 0)), kind, 0.0))
            out.append(row)
        return out

    def _score(
        self, prompt_ids: list[list[int]], gens: list[list[Generation]], suffix: str, choices: dict[str, str]
    ) -> None:
        key = tuple(choices.items())
        if key not in self.choice_ids:
            self.choice_ids[key] = {label: self._ids(piece) for label, piece in choices.items()}
        ids = self.choice_ids[key]
        inputs = [p + self._ids(g.text + suffix) for p, row in zip(prompt_ids, gens) for g in row]
        flat = [g for row in gens for g in row]
        if all(len(v) == 1 for v in ids.values()):
            token_ids = [v[0] for v in ids.values()]
            body = {
                "input_ids": inputs,
                "sampling_params": [{"max_new_tokens": 1, "temperature": 0.0} for _ in inputs],
                "return_logprob": True,
                "logprob_start_len": -1,
                "token_ids_logprob": [token_ids for _ in inputs],
            }
            for g, a in zip(flat, self._generate(body, len(inputs))):
                entries = (a["meta_info"].get("output_token_ids_logprobs") or [[]])[0] or []
                by_id = {int(e[1]): math.exp(e[0]) for e in entries if e and e[0] is not None}
                g.choice_probs = {label: by_id.get(v[0], 0.0) for label, v in ids.items()}
        else:  # a choice of several tokens: constrain the answer to the choices, probability 1 on the one generated
            pattern = "(" + "|".join(re.escape(p) for p in sorted(choices.values(), key=len, reverse=True)) + ")"
            body = {
                "input_ids": inputs,
                "sampling_params": [{"max_new_tokens": 8, "temperature": 0.0, "regex": pattern} for _ in inputs],
            }
            for g, a in zip(flat, self._generate(body, len(inputs))):
                got = a["text"].strip()
                g.choice_probs = {label: float(piece.strip() == got) for label, piece in choices.items()}

    def _generate(self, body: dict, expect: int) -> list[dict]:
        if self.adapter:  # one name for every input (GenerateReqInput._normalize_lora_paths, io_struct.py:635-643)
            body = {**body, "lora_path": self.adapter}
        answers = self.client.generate(body, expect)
        answers = answers if isinstance(answers, list) else [answers]
        if not all(isinstance(a, dict) and isinstance(a.get("meta_info"), dict) for a in answers):
            raise MrtkError(
                f"SGLang answered /generate with {str(answers[0])[:80]!r}, not generations; is the URL an SGLang server?"
            )
        if len(answers) != expect:
            raise MrtkError(
                f"SGLang answered {len(answers)} generations for {expect} requested; is the URL an SGLang /generate server?"
            )
        if self.weight_version:
            wrong = [
                a["meta_info"].get("weight_version")
                for a in answers
                if a["meta_info"].get("weight_version") not in (None, self.weight_version)
            ]
            if wrong:
                raise MrtkError(
                    f"SGLang served weight version {wrong[0]!r}, the loop expects {self.weight_version!r}; "
                    "another client updated the weights? run: mrtk run --resume RUN"
                )
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
        for answer in self.client.update_everywhere(
            "/update_weights_from_disk", {"model_path": str(model_path), "weight_version": version}, version
        ):
            if not isinstance(answer, dict) or not answer.get("success", False):
                message = answer.get("message") if isinstance(answer, dict) else answer
                raise MrtkError(f"SGLang could not load {model_path}: {message}; check the saved model")
        self.weight_version = version

    def use_adapter(self, name: str, path: Path) -> float:
        """Requests from now on name the adapter `name` at `path`, loaded on every worker first
        (`/load_lora_adapter` {lora_name, lora_path}: http_server.py:1652-1660, LoadLoRAAdapterReqInput in
        io_struct.py:2516; an adapter loaded before is not loaded again). The name holds a hash of the
        adapter's weights, so a name the servers already know (a resumed run) is the same adapter, and
        "already loaded" on a retried call is success (lora_manager.py:354-359). Returns the seconds the load took (0: loaded before)."""
        t0 = time.monotonic()
        if name not in self.loaded:
            body = {"lora_name": name, "lora_path": _absolute(str(path))}
            for url, a in self.client.each_worker("/load_lora_adapter", body):
                message = str(a.get("error_message") or "") if isinstance(a, dict) else str(a)
                if not (isinstance(a, dict) and a.get("success")) and "already loaded" not in message:
                    raise MrtkError(
                        f"SGLang at {url} could not load the LoRA adapter {path}: {message[:200]}; sglang.weight_sync: "
                        "lora needs servers started with --enable-lora, --max-lora-rank and --lora-target-modules "
                        "(mrtk adds them to a server it launches), or use weight_sync: full"
                    )
            self.loaded.add(name)
        self.adapter = name
        return time.monotonic() - t0


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
    seeds are honoured). A new model is loaded in place with a weight update, or (sglang.weight_sync:
    lora) the servers keep M1 and requests name the adapter M1 -> M_t, loaded once."""

    def __init__(
        self,
        cfg,
        run_dir: Path,
        tokenizer_for,
        info=lambda text: None,
        on_serving=lambda serving: None,
        lora: tuple[int, list[str]] | None = None,
    ):
        self.cfg, self.run_dir, self.tokenizer_for, self.info, self.on_serving = (
            cfg,
            Path(run_dir),
            tokenizer_for,
            info,
            on_serving,
        )
        self.lora = lora  # sglang.weight_sync: lora: (the largest stacked rank, the target modules)
        self.names: dict[str, str | None] = {}  # model dir -> the name its adapter is loaded under (None: the base)
        self.adapters: dict[str, Path | None] = {}  # model dir -> its adapter (with self.lora), or None
        self.backend: SGLangBackend | None = None
        self.model_dir: str | None = None
        self.server: Server | None = None
        self.serving: dict | None = None

    def use(self, model_dir: str) -> SGLangBackend:
        from mrtk.backends import model_version
        from mrtk.training.adapters import LORA_DIR, base_of

        if model_dir not in self.adapters:  # read once per model, not per call
            path = Path(model_dir) / LORA_DIR
            self.adapters[model_dir] = path if self.lora and path.is_dir() else None
        adapter = self.adapters[model_dir]
        s = self.cfg
        if self.backend is None:
            served = base_of(adapter) if adapter else model_dir  # with adapters, the servers hold M1 throughout
            version = model_version(served)
            urls = s.urls
            if s.launch:
                url = f"http://{s.host}:{s.port}"
                self.server = Server(
                    launch_command(served, s, version, self.lora),
                    url,
                    self.run_dir / "sglang.log",
                    s.startup_timeout_s,
                )
                self.server.__enter__()
                urls, self.model_dir = [url], served
            client = SGLangClient(
                urls,
                worker_urls=None if s.launch else s.worker_urls,
                smg=s.smg,  # smg with launch: refused by the config
                timeout_s=s.request_timeout_s,
                control_timeout_s=s.control_timeout_s,
                retries=s.retries,
                max_inflight=s.max_inflight,
            )
            self.serving = client.check_servers()
            self.on_serving(self.serving)
            if not self.serving["seeds_honoured"]:
                self.info(
                    "SGLang ignores sampling_seed on these servers (no --enable-deterministic-inference): samples are "
                    "independent but not reproducible; recorded on the run (runs.serving)"
                )
            self.backend = SGLangBackend(
                client,
                self.tokenizer_for(model_dir),
                weight_version=version if s.launch else None,
                max_batch_rows=s.max_batch_rows,
            )
        if self.lora:
            self._adapter(model_dir, adapter)
        elif self.model_dir != model_dir:
            self.backend.update_weights(model_dir, model_version(model_dir))  # flushes the radix cache too
            self.model_dir = model_dir
        return self.backend

    def _adapter(self, model_dir: str, adapter: Path | None) -> None:
        """Requests name `model_dir`'s adapter (none: the base, M1, which the servers hold)."""
        from mrtk.backends import model_version
        from mrtk.training.adapters import adapter_name

        if model_dir not in self.names:  # checked and hashed once per model, not per call
            if adapter is None and self.model_dir is not None and _absolute(model_dir) != _absolute(self.model_dir):
                raise MrtkError(
                    f"sglang.weight_sync: lora: {model_dir} has no adapter (lora/) and is not the model the server holds "
                    f"({self.model_dir}); it was trained without weight_sync: lora: use weight_sync: full"
                )
            self.names[model_dir] = adapter and adapter_name(model_version(model_dir), adapter)
        if self.names[model_dir] is None:
            self.backend.adapter = None
            return
        name = self.names[model_dir]
        first = name not in self.backend.loaded
        seconds = self.backend.use_adapter(name, adapter)
        if first:
            size = sum(f.stat().st_size for f in adapter.iterdir()) / 2**20
            self.info(
                f"{model_version(model_dir)} on the servers as LoRA adapter {name} ({size:.1f} MiB, {seconds:.2f} s)"
            )

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
