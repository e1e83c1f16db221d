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

import http.client
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
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from mrtk.backends.base import Generation, Progress, Request, SamplingParams
from mrtk import faults
from mrtk.errors import MrtkError
from mrtk.models import PrefixEncoder, chat_token_ids

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
TRANSIENT = (
    OSError,
    http.client.HTTPException,
)  # refused, reset, timed out, a retryable status (ConnectionError): try again
MIN_VERSION = (0, 5, 3)  # `sampling_seed` exists from 0.5.3 (sglang/srt/sampling/sampling_params.py)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3]) or (0,)


class ServerError(Exception):
    """An HTTP answer that retrying will not fix (4xx other than 408/429)."""


def launch_command(model_path: str, cfg, weight_version: str | None = None) -> list[str]:
    """The `sglang.launch_server` command line for a config's `sglang` section."""
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


def _exchange(
    conn: http.client.HTTPConnection, url: str, path: str, body, method: str | None = None
) -> tuple[int, object]:
    """One HTTP call on `conn` (to `url`): (status, payload). A status worth retrying (408, 429,
    5xx) raises ConnectionError, another 4xx ServerError; a connection that failed is closed."""
    data = json.dumps(body).encode() if body is not None else None
    try:
        conn.request(
            method or ("POST" if body is not None else "GET"),
            path,
            body=data,
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        raw = resp.read()
    except BaseException:
        conn.close()
        raise
    if resp.status in RETRY_STATUS:
        raise ConnectionError(f"HTTP {resp.status}: {raw.decode(errors='replace')[:300]}")
    if resp.status >= 400:
        raise ServerError(
            f"HTTP {resp.status} from {url}{path}: {' '.join(raw.decode(errors='replace')[:300].split())}"
        )
    return resp.status, _payload(raw)


def _request(url: str, path: str, body: dict | None, timeout: float) -> tuple[int, object]:
    """One call on a connection of its own (health and server checks)."""
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=timeout)
    try:
        return _exchange(conn, url, path, body)
    finally:
        conn.close()


def _payload(raw: bytes):
    """A response body: JSON where it is JSON, else its text (`/flush_cache` answers plain text,
    sglang/srt/entrypoints/http_server.py:1025-1040 in 0.5.23)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


OVERSUBSCRIBE = (
    8  # samples in flight per slot a server reports: a request holds its share until its slowest sample ends
)


class _Slot:
    """One URL generation goes to: its window (samples in flight at most), what is in flight, and
    how long it has failed without an answer in between."""

    def __init__(self, url: str, window: int):
        self.url, self.window, self.outstanding = url, window, 0
        self.failures, self.failing_since, self.dead, self.last_error = 0, None, False, ""


class SGLangClient:
    """Generation over one or more servers (or one router/gateway URL), many requests in flight:
    each `/generate` goes to the live server with the fewest outstanding samples, within its
    window (sized from the server's `/server_info`, else `max_inflight`); a failed request is
    retried on another server at once, or on the same one with backoff when it is the only one.
    A server that fails `retries + 1` times in a row over `dead_after_s` is dropped; the stage
    goes on with the rest, and fails in one line naming the servers when none is left.
    Control calls (memory release/resume, weight updates) go to every worker, retried with backoff.

    `worker_urls`: where control calls go when `urls` is an SGLang router, which serves
    generation only (sglang-router 0.3.2 has no weight-update or memory endpoints); default:
    the servers in `urls` themselves. `smg`: `urls` is one SGLang Model Gateway started with
    `--enable-rl`, whose RL control plane fans control calls out to its workers
    (`/v1/rl/engine/{path}?selector=engine=sglang`, smg 1.13.0 smg/rl.py:199-217)."""

    def __init__(
        self,
        urls: list[str],
        *,
        worker_urls: list[str] | None = None,
        smg: bool = False,
        timeout_s: float = 600.0,
        control_timeout_s: float = 1800.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_inflight: int = 256,
    ):
        if not urls:
            raise MrtkError("sglang: no server URL; set sglang.urls or sglang.launch: true")
        self.urls = [u.rstrip("/") for u in urls]
        self.smg = smg
        self.worker_urls = [u.rstrip("/") for u in worker_urls] if worker_urls else self.urls
        self.timeout_s, self.retries, self.backoff_s, self.max_inflight = timeout_s, retries, backoff_s, max_inflight
        self.control_timeout_s = control_timeout_s
        self.dead_after_s = backoff_s * (2 ** (retries + 1) - 1)  # the backoff schedule of one request, spent
        self.slots = [_Slot(u, max_inflight) for u in self.urls]
        self.cond = threading.Condition()
        self.local = threading.local()  # one keep-alive connection per thread and server

    # -- generation: many requests in flight --------------------------------------------------
    def window(self) -> int:
        """Samples in flight over all servers at most."""
        return sum(s.window for s in self.slots if not s.dead)

    def generate(self, body: dict, samples: int):
        """POST /generate to the least-loaded live server with room for `samples` more."""
        tried: set[str] = set()
        for attempt in itertools.count():
            slot = self._acquire(samples, tried)
            try:
                payload = self._send(slot.url, "/generate", body, None)
            except TRANSIENT as e:
                self._release(slot, samples, f"{type(e).__name__}: {e}")
                tried.add(slot.url)
                with self.cond:
                    live = [s.url for s in self.slots if not s.dead]
                if not live:
                    raise MrtkError(self._none_left()) from None
                if set(live) <= tried:  # every live server failed this request: wait, then try them again
                    time.sleep(self.backoff_s * 2 ** min(attempt, 6))
                    tried.clear()
                continue
            self._release(slot, samples, None)
            return payload

    def _acquire(self, samples: int, avoid: set[str]) -> _Slot:
        with self.cond:
            while True:
                live = [s for s in self.slots if not s.dead]
                if not live:
                    raise MrtkError(self._none_left())
                fits = [s for s in live if s.outstanding == 0 or s.outstanding + samples <= s.window]
                pick = min(fits, key=lambda s: (s.url in avoid, s.outstanding / s.window), default=None)
                if pick is not None:
                    pick.outstanding += samples
                    return pick
                self.cond.wait()

    def _release(self, slot: _Slot, samples: int, error: str | None) -> None:
        with self.cond:
            slot.outstanding -= samples
            if error is None:
                slot.failures, slot.failing_since = 0, None
            else:
                slot.failures += 1
                slot.failing_since = slot.failing_since or time.monotonic()
                slot.last_error = error
                if slot.failures > self.retries and time.monotonic() - slot.failing_since >= self.dead_after_s:
                    slot.dead = True
            self.cond.notify_all()

    def _none_left(self) -> str:
        gone = "; ".join(f"{s.url} ({s.last_error})" for s in self.slots)
        return (
            f"SGLang did not answer /generate after {self.retries + 1} tries: {gone}; finished rows are saved, "
            "fix the server and run: mrtk run --resume RUN"
        )

    def _send(self, url: str, path: str, body, method):
        """One HTTP call on this thread's keep-alive connection to `url` (a closed one reconnects)."""
        conns = self.local.__dict__.setdefault("conns", {})
        if url not in conns:
            conns[url] = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=self.timeout_s)
        try:
            return _exchange(conns[url], url, path, body, method)[1]
        except ServerError as e:
            if "HTTP 404" in str(e) and path != "/generate":
                raise MrtkError(
                    f"{url} has no {path} (HTTP 404): an SGLang router serves generation only; list its workers "
                    "in sglang.worker_urls so control calls reach them (or set sglang.smg for an SMG gateway)"
                ) from None
            raise MrtkError(f"SGLang refused {path}: {e}") from None

    # -- control calls ---------------------------------------------------------------------------
    def call(self, path: str, body: dict | None = None, *, every: bool = False, method: str | None = None):
        """POST (or GET without a body) `path` to the first live server; with `every`, to every
        worker (weight updates, memory), through the gateway with `smg`. Retried with backoff."""
        if every and self.smg:
            return self._fanout(path, body)
        if every:
            answers, failed = [], []
            for u in self._live_workers():
                try:
                    answers.append(self._retrying(u, path, body, method))
                except MrtkError as e:
                    failed.append((u, e))
            self._drop(failed, bool(answers))
            return answers
        return self._retrying(self.urls[0], path, body, method)

    def _drop(self, failed: list[tuple[str, Exception]], others_answered: bool) -> None:
        """Workers that did not answer a control call after every retry: where they are servers of
        their own (no router) and another answered, they are dropped as generation drops a dead
        server, and the run goes on with the rest; otherwise the first failure is the error."""
        if not failed:
            return
        own = {s.url: s for s in self.slots}
        if not others_answered or any(u not in own for u, _ in failed):
            raise failed[0][1]
        with self.cond:
            for u, e in failed:
                own[u].dead, own[u].last_error = True, str(e)
            self.cond.notify_all()

    def _live_workers(self) -> list[str]:
        """The workers control calls go to: a server generation dropped as dead is out of the run."""
        with self.cond:
            dead = {s.url for s in self.slots if s.dead}
        return [u for u in self.worker_urls if u not in dead]

    def _fanout(self, path: str, body):
        """smg's `/v1/rl/engine/{path}?selector=engine=sglang`: every worker's answer body, or a
        one-line error naming the workers that failed (smg/rl.py:199-217 reads 200/207 the same way)."""
        route = f"/v1/rl/engine/{path.lstrip('/')}?selector=engine%3Dsglang"
        answer = self._retrying(self.urls[0], route, body if body is not None else {}, "POST")
        if not isinstance(answer, dict) or "results" not in answer:
            raise MrtkError(
                f"{self.urls[0]} answered {route} with {str(answer)[:80]!r}; is it an SMG gateway started with --enable-rl?"
            )
        if answer.get("failed"):
            names = ", ".join(
                f"{f.get('url') or f.get('worker_id')} ({f.get('error')}: {f.get('message')})" for f in answer["failed"]
            )
            raise MrtkError(
                f"SGLang workers failed {path} through the gateway: {names}; fix them and run: mrtk run --resume RUN"
            )
        bodies = []
        for r in answer["results"].values():
            if int(r.get("status", 0)) >= 400 and not isinstance(r.get("body"), dict):
                raise MrtkError(
                    f"SGLang worker {r.get('url')} refused {path}: HTTP {r.get('status')} {str(r.get('body'))[:200]}"
                )
            bodies.append(r.get("body"))
        return bodies

    def update_everywhere(self, path: str, body: dict, version: str) -> list:
        """A weight update that is safe to repeat: the first try goes to every worker (at attach a server
        may report the version while serving other weights); each retry first asks every worker what it
        holds (`/model_info`'s `weight_version` and `model_path`, the live values in SGLang 0.5.23,
        http_server.py:812-825; `/server_info` reports the startup ones, :865-873) and sends the update,
        in parallel, only to the workers still behind. A worker whose refit outlasted the timeout but
        finished is not refit again. With `smg` both go through the gateway's one-worker route
        (`/v1/rl/workers/{id}/engine/{path}`, smg 1.13.0 smg/rl.py:182-197). Returns the answers of
        the workers updated."""
        answers, last, failing, workers = [], "", None, []  # failing: the workers the last try could not update
        held = (version, body.get("model_path"))
        for attempt in range(self.retries + 1):
            try:
                workers = self._control_workers()
                behind = workers if attempt == 0 else [w for w in workers if self._holds(w) != held]
            except ServerError as e:  # the gateway's worker list, refused
                raise MrtkError(f"SGLang refused the worker list for {path}: {e}") from None
            except TRANSIENT as e:  # the gateway's worker list
                last = str(e)
                time.sleep(self.backoff_s * 2**attempt)
                continue
            if not behind:
                return answers
            with ThreadPoolExecutor(len(behind)) as pool:
                outcomes = list(pool.map(lambda w: self._attempt(w, path, body), behind))
            failing = [w for w, (ok, _) in zip(behind, outcomes) if not ok]
            for w, (ok, answer) in zip(behind, outcomes):
                if ok:
                    answers.append(answer)
                else:
                    last = f"{w[0]}: {answer}"
            if not failing:
                return answers
            time.sleep(self.backoff_s * 2**attempt)
        error = MrtkError(
            f"SGLang did not answer {path} after {self.retries + 1} tries ({last}); finished rows are saved, "
            f"fix the server (or raise sglang.control_timeout_s, now {self.control_timeout_s:.0f}s) and run: "
            "mrtk run --resume RUN"
        )
        if failing is None:  # no try got as far as asking the versions
            raise error
        self._drop([(w[0], error) for w in failing], len(failing) < len(workers) and not self.smg)
        return answers

    def _holds(self, worker) -> tuple | None:
        """(weight version, model path) a worker holds; None where it does not answer (it counts as behind)."""
        try:
            info = self._control(worker, "/model_info", None)
            return info.get("weight_version"), info.get("model_path")
        except ServerError as e:
            raise MrtkError(f"SGLang refused a weight version check: {e}") from None
        except TRANSIENT:
            return None

    def _control_workers(self) -> list[tuple[str, str, str]]:
        """(worker url, where to send, path prefix) per worker: the gateway and its one-worker route with
        `smg`, else each worker itself."""
        if not self.smg:
            return [(u, u, "") for u in self._live_workers()]
        _, listed = _request(self.urls[0], "/v1/rl/workers", None, self.timeout_s)
        return [(w.get("url") or w["id"], self.urls[0], f"/v1/rl/workers/{w['id']}/engine") for w in listed["workers"]]

    def _control(self, worker: tuple[str, str, str], path: str, body):
        """One control call to one worker, on a connection of its own with the control timeout; the
        worker's own answer (unwrapped from the gateway's {worker_id, url, status, body})."""
        url, base, prefix = worker
        _, payload = _request(base, prefix + path, body, self.control_timeout_s)
        if prefix:
            if not isinstance(payload, dict) or "status" not in payload:
                raise MrtkError(f"{base} answered {prefix + path} with {str(payload)[:80]!r}; is it an SMG gateway?")
            if int(payload["status"]) in RETRY_STATUS:
                raise ConnectionError(f"HTTP {payload['status']} from {url}: {str(payload.get('body'))[:200]}")
            return payload.get("body") if isinstance(payload.get("body"), dict) else {}
        return payload if isinstance(payload, dict) else {}

    def _attempt(self, worker, path: str, body) -> tuple[bool, object]:
        """(True, the answer) or (False, why) for one worker; a refusal (4xx) is an answer, not a retry."""
        try:
            return True, self._control(worker, path, body)
        except ServerError as e:
            return True, {"success": False, "message": str(e)}
        except TRANSIENT as e:
            return False, f"{type(e).__name__}: {e}"

    def _retrying(self, url, path, body, method):
        for attempt in range(self.retries + 1):
            try:
                return self._send(url, path, body, method)
            except TRANSIENT as e:  # refused, reset, timed out, 5xx/429: another try
                last = f"{url}: {e}"
                time.sleep(self.backoff_s * 2**attempt)
        raise MrtkError(
            f"SGLang did not answer {path} after {self.retries + 1} tries ({last}); finished rows are saved, "
            "fix the server and run: mrtk run --resume RUN"
        )

    # -- what the servers are ----------------------------------------------------------------
    def server_info(self, url: str) -> dict:
        """`/server_info` (0.5.x; `/get_server_info` in older releases), or {} if neither answers."""
        for path in ("/server_info", "/get_server_info"):
            try:
                status, payload = _request(url, path, None, self.timeout_s)
            except ServerError:
                continue
            except TRANSIENT as e:
                raise MrtkError(f"SGLang at {url} does not answer ({e}); start it or fix sglang.urls") from None
            if isinstance(payload, dict):
                return payload
        return {}

    def _worker_infos(self) -> dict[str, dict]:
        if not self.smg:
            return {u: self.server_info(u) for u in self.worker_urls}
        workers = self._retrying(self.urls[0], "/v1/rl/workers", None, "GET")
        if not isinstance(workers, dict) or not workers.get("workers"):
            raise MrtkError(
                f"{self.urls[0]} lists no workers at /v1/rl/workers; start the gateway with --enable-rl and its workers"
            )
        infos = {}
        for w in workers["workers"]:
            answer = self._retrying(self.urls[0], f"/v1/rl/workers/{w['id']}/engine/server_info", None, "GET")
            infos[w.get("url") or w["id"]] = (
                (answer or {}).get("body") if isinstance((answer or {}).get("body"), dict) else {}
            )
        return infos

    def check_servers(self) -> dict:
        """Refuse servers older than MIN_VERSION (no `sampling_seed` before 0.5.3: every request
        would be HTTP 500); size each URL's window from what its servers report; returns what
        the run records: versions, windows and whether seeds are honoured (only with
        --enable-deterministic-inference, sampling_batch_info.py:157-171)."""
        infos = self._worker_infos()
        for url, info in infos.items():
            if not info:
                hint = (
                    " (an SGLang router? list its workers in sglang.worker_urls)"
                    if self.worker_urls == self.urls
                    else ""
                )
                raise MrtkError(
                    f"{url} answers neither /server_info nor /get_server_info, so it is no SGLang server mrtk can "
                    f"check{hint}"
                )
            got = str(info.get("version", "0"))
            if _version_tuple(got) < MIN_VERSION:
                raise MrtkError(
                    f"SGLang {got} at {url} is older than {'.'.join(map(str, MIN_VERSION))} (no sampling_seed); "
                    f"upgrade it: pip install 'sglang>={'.'.join(map(str, MIN_VERSION))}'"
                )
        windows = {u: window_for(i, self.max_inflight) for u, i in infos.items()}
        for slot in self.slots:  # a server is its own window; a router or gateway gets its workers' sum
            slot.window = windows[slot.url] if slot.url in windows else sum(windows.values())
        deterministic = all(bool(i.get("enable_deterministic_inference")) for i in infos.values())
        return {
            "versions": {u: i.get("version") for u, i in infos.items()},
            "deterministic": deterministic,
            "seeds_honoured": deterministic,
            "urls": self.urls,
            "worker_urls": list(infos),
            "windows": {s.url: s.window for s in self.slots},
        }


def window_for(info: dict, fallback: int) -> int:
    """Samples to keep in flight at one server: OVERSUBSCRIBE x the requests it runs at once, as
    `/server_info` reports them (per DP rank in `internal_states`, sglang 0.5.23
    scheduler_components/internal_state.py:73; else `max_running_requests` x `dp_size`), or
    `fallback` (sglang.max_inflight) when it says nothing."""
    per_rank = [
        s.get("effective_max_running_requests_per_dp") for s in info.get("internal_states") or [] if isinstance(s, dict)
    ]
    if per_rank and all(isinstance(x, int) and x > 0 for x in per_rank):
        return OVERSUBSCRIBE * sum(per_rank)
    running = info.get("max_running_requests")
    if isinstance(running, int) and running > 0:
        return OVERSUBSCRIBE * running * max(1, int(info.get("dp_size") or 1))
    return fallback


class SGLangBackend:
    name = "sglang"

    def __init__(
        self, client: SGLangClient, tokenizer, *, weight_version: str | None = None, max_batch_rows: int = 256
    ):
        self.client, self.tok = client, tokenizer
        self.weight_version = weight_version
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
        keep the requests' order. Requests in flight come from the callers: `runs.run_chunks`
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
        self.cfg, self.run_dir, self.tokenizer_for, self.info, self.on_serving = (
            cfg,
            Path(run_dir),
            tokenizer_for,
            info,
            on_serving,
        )
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
                self.server = Server(
                    launch_command(model_dir, s, version), url, self.run_dir / "sglang.log", s.startup_timeout_s
                )
                self.server.__enter__()
                urls, self.model_dir = [url], model_dir
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
