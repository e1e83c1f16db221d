"""HTTP to SGLang servers, one call at a time: the exchange on a keep-alive connection, what is
worth retrying (408, 429, 5xx, a refused or reset connection) and what is not (another 4xx), and a
body that is not JSON (`/flush_cache` answers plain text, sglang/srt/entrypoints/http_server.py
1025-1040 in 0.5.23) read as text. The dispatching client (sglang_client.py) and the launcher
(sglang.py) speak through it."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse


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
