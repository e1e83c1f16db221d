"""The dispatching client: many `/generate` requests in flight over one or more SGLang servers (or
one router or gateway URL), each to the live server with the fewest outstanding samples within its
window; failed requests retried across servers; a server that keeps failing dropped; control calls
(memory release and resume, weight updates) sent to every worker and repeated only where a worker
is behind. Spoken to by `SGLangBackend` (sglang.py); HTTP itself is sglang_http.py."""

from __future__ import annotations

import http.client
import itertools
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from mrtk.errors import MrtkError

from mrtk.backends.sglang_http import (
    MIN_VERSION,
    RETRY_STATUS,
    TRANSIENT,
    ServerError,
    _exchange,
    _request,
    _version_tuple,
)

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

    def each_worker(self, path: str, body: dict) -> list[tuple[str, object]]:
        """`path` to every live worker once (transient errors retried): (worker, its answer, or the text
        of its refusal). For control calls whose refusals the caller reads (an adapter already loaded);
        nothing is dropped here."""
        out = []
        for u in self._live_workers():
            try:
                out.append((u, self._retrying(u, path, body, None)))
            except MrtkError as e:
                out.append((u, str(e)))
        return out

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
