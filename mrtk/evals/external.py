"""External judges through LiteLLM, for evaluation only (never imported by the training loop).

Every call is keyed by the hash of (model, api_base, messages, sampling) and recorded in the
run's `eval_calls` table: messages, raw reply, tokens, cost, latency, attempts, status. A call
whose key already holds a successful reply is served from the table (a cache hit costs
nothing), so a re-run or a crashed eval resumes for free. Failures (after retries with
backoff on rate limits, timeouts and server errors) are recorded as failures and never become
verdicts. `max_cost` stops before a call that could push the eval's spend over the budget.
API keys are read by LiteLLM from the environment; they are never passed through, stored or
logged by mrtk, and any text that looks like a key is masked before a row is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field

from mrtk.errors import MrtkError
from mrtk.store import RunStore

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # nothing fetched at import
_KEY_LIKE = re.compile(
    r"\b(sk-[A-Za-z0-9_\-]{6,}|sk-ant-[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{20,}|xox[abp]-[A-Za-z0-9\-]{10,})"
)
RETRYABLE = (
    "RateLimitError",
    "Timeout",
    "APIConnectionError",
    "ServiceUnavailableError",
    "InternalServerError",
    "BadGatewayError",
    "APIError",
)  # LiteLLM's exception classes (litellm/exceptions.py); subclasses count too


def retryable(error: Exception) -> bool:
    """Rate limits, timeouts, lost connections and 5xx (502 is `BadGatewayError`), by class, so
    LiteLLM's subclasses (e.g. `RouterRateLimitError`) are retried too; 4xx are final."""
    import litellm

    classes = tuple(c for c in (getattr(litellm, n, None) for n in RETRYABLE) if isinstance(c, type))
    status = getattr(error, "status_code", None)
    return isinstance(error, classes) or (isinstance(status, int) and (status == 429 or status >= 500))


def redact(text: str | None) -> str | None:
    return _KEY_LIKE.sub("[redacted]", text) if text else text


@dataclass
class Reply:
    text: str | None
    ok: bool
    cache_hit: bool
    cost_usd: float
    call_key: str
    error: str | None = None
    top_logprobs: list[dict] | None = None  # the first token's top logprobs, when asked for (AlpacaEval's annotator)


@dataclass
class ExternalJudge:
    """One external model. `mock_response` goes through LiteLLM's own mock code path (tests use it
    as a priced call; `--dry-run-reply` sets `dry_run` too, so it costs nothing)."""

    store: RunStore
    model: str
    api_base: str | None = None
    max_cost: float | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    mock_response: object = None
    dry_run: bool = False  # `--dry-run-reply`: mock_response is the user's stand-in reply, not a priced call
    extra: dict = field(default_factory=dict)  # more completion arguments, e.g. {"logprobs": True, "top_logprobs": 5}
    spent: float = field(default=0.0, init=False)
    calls: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)

    def key(self, messages: list[dict]) -> str:
        blob = json.dumps(
            [self.model, self.api_base, messages, self.temperature, self.max_tokens]
            + ([self.extra] if self.extra else []),
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def ask(self, messages: list[dict]) -> Reply:
        key = self.key(messages)
        cached = self.store.cached_call(key)
        if cached:
            self.hits += 1
            return Reply(
                cached["raw_reply"], True, True, 0.0, key, top_logprobs=json.loads(cached["logprobs"] or "null")
            )
        dry = self.dry_run  # --dry-run-reply: never priced, never counted against --max-cost
        if not dry and self.max_cost is not None and self.spent + self._worst_cost(messages) > self.max_cost:
            raise MrtkError(
                f"--max-cost {self.max_cost:g} USD reached (spent {self.spent:.4f} USD on {self.calls} calls); "
                "finished rows are kept, rerun with a higher --max-cost to continue"
            )
        import litellm

        attempts, t0, error = 0, time.perf_counter(), None
        while True:
            attempts += 1
            try:
                kwargs = {"mock_response": self.mock_response} if self.mock_response is not None else {}
                # drop_params: a judge that rejects a parameter (o-series models refuse `temperature`) gets the call without it
                resp = litellm.completion(
                    model=self.model,
                    messages=messages,
                    api_base=self.api_base,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    timeout=self.timeout_s,
                    num_retries=0,
                    drop_params=True,
                    **self.extra,
                    **kwargs,
                )
                break
            except Exception as e:  # LiteLLM maps provider errors onto its own exception types
                error = f"{type(e).__name__}: {redact(' '.join(str(e).split()))[:300]}"
                if not retryable(e) or attempts > self.retries:
                    self._record(key, messages, None, "failed", error, None, 0.0, time.perf_counter() - t0, attempts)
                    self.calls += 1
                    return Reply(None, False, False, 0.0, key, error)
                time.sleep(self.backoff_s * 2 ** (attempts - 1))
        text = resp.choices[0].message.content or ""
        try:
            cost = 0.0 if dry else float(litellm.completion_cost(completion_response=resp))
        except Exception:  # a model missing from the local cost map (e.g. a local server): free
            cost = 0.0
        self.spent += cost
        self.calls += 1
        top = _top_logprobs(resp) if self.extra.get("logprobs") else None
        self._record(
            key, messages, text, "ok", None, getattr(resp, "usage", None), cost, time.perf_counter() - t0, attempts, top
        )
        return Reply(text, True, False, cost, key, top_logprobs=top)

    def _worst_cost(self, messages: list[dict]) -> float:
        """An upper bound on one call: prompt tokens (4 chars each, rounded up) plus max_tokens."""
        try:
            import litellm

            info = litellm.get_model_info(self.model)
            chars = sum(len(m.get("content") or "") for m in messages)
            return (chars / 4 + 1) * (info.get("input_cost_per_token") or 0) + self.max_tokens * (
                info.get("output_cost_per_token") or 0
            )
        except Exception:
            return 0.0

    def _record(self, key, messages, text, status, error, usage, cost, latency, attempts, top_logprobs=None) -> None:
        self.store.record_call(
            {
                "call_key": key,
                "model": self.model,
                "api_base": self.api_base,
                "messages": [dict(m, content=redact(m.get("content"))) for m in messages],
                "raw_reply": redact(text),
                "status": status,
                "error": error,
                "prompt_tokens": getattr(usage, "prompt_tokens", None),
                "completion_tokens": getattr(usage, "completion_tokens", None),
                "cost_usd": cost,
                "latency_s": latency,
                "attempts": attempts,
                "params": {
                    "temperature": self.temperature,
                    "max_tokens": self.max_tokens,
                    "dry_run": self.dry_run,
                    **self.extra,
                },
                "logprobs": top_logprobs,
            }
        )


def _top_logprobs(resp) -> list[dict] | None:
    """The first generated token's top logprobs ([{token, logprob}]) of an OpenAI-format reply, or None."""
    try:
        content = resp.choices[0].logprobs.content
        first = content[0]
        return [{"token": t.token, "logprob": float(t.logprob)} for t in first.top_logprobs]
    except (AttributeError, IndexError, TypeError):
        return None
