"""The serving routes the feeder uses, over HTTP (httpx): push candles, reset a symbol's stream.

`pipelines` never imports `serving`: this client speaks its JSON API (`serving/schemas.py`:
`CandlesIn`, the batch answer of `POST /v1/candles/batch`, `DELETE /v1/streams/{symbol}`), so the
feeder runs in its own process, next to or far from the server.

Errors are sorted by what the caller can do about them: `ServingDown` (unreachable, timeout, 5xx, 429,
a refused key: keep the candles and retry later) versus a per-symbol answer (404 not served, 409 stream
out of step, 422 refused candles) that the feeder acts on symbol by symbol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pandas as pd

from pipelines.contracts.errors import KairosError

API_FIELDS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_asset_volume",
    "number_of_trades",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)


class ServingDown(KairosError):
    """Serving did not take a request (unreachable, timeout, 5xx, 429, refused key); retry later."""


@dataclass(frozen=True)
class ItemResult:
    """Serving's answer for one symbol: HTTP-like status, candles accepted, warm-up left or the error."""

    status: int
    accepted: int
    warmup_remaining: int | None = None
    error: str | None = None


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))[:300]
    except ValueError:
        return r.text[:200].strip()


def epoch_ms(times: pd.Series) -> np.ndarray:
    """int64 epoch milliseconds (n,) of a tz-aware open_time column."""
    return times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").astype(np.int64)


def api_candles(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Candle frame → the JSON candles of serving's API (open_time as epoch ms)."""
    t = epoch_ms(df["open_time"])
    cols = {c: df[c].to_numpy() for c in API_FIELDS}
    out = []
    for i in range(len(df)):
        c: dict[str, Any] = {"open_time": int(t[i])}
        for k, v in cols.items():
            c[k] = int(v[i]) if k == "number_of_trades" else float(v[i])
        out.append(c)
    return out


class ServingClient:
    """Serving's stream routes over one keep-alive HTTP connection.

    Args:
        url: serving's base URL, e.g. http://127.0.0.1:8000.
        api_key: bearer key with the `stream` scope (None when serving runs without auth).
        timeout_s: per request.
        tries: attempts of a request that could not connect (a blip), before ServingDown.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 10.0, tries: int = 2) -> None:
        if not url.startswith(("http://", "https://")):
            raise KairosError(f"serving URL {url!r} must start with http:// or https://")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.tries = tries
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.tries):
            try:
                r = self._http.request(method, path, **kw)
            except httpx.TransportError as e:  # refused, reset, timed out
                if attempt + 1 < self.tries:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise ServingDown(f"serving at {self.url} is unreachable ({first_line(e)})") from None
            if r.status_code in (401, 403):
                raise ServingDown(
                    f"serving at {self.url} refused the API key ({r.status_code}: {_error(r)}); "
                    "pass --api-key with a key of the `stream` scope"
                )
            if r.status_code == 429 or r.status_code >= 500:
                raise ServingDown(f"serving at {self.url} answered {r.status_code} ({_error(r)})")
            return r
        raise AssertionError("unreachable")

    def push(self, items: dict[str, list[dict[str, Any]]], interval: str) -> dict[str, ItemResult]:
        """POST /v1/candles/batch: each symbol's candles, oldest first → that symbol's answer."""
        body = [{"symbol": s, "interval": interval, "candles": c} for s, c in items.items()]
        r = self._request("POST", "/v1/candles/batch", json=body)
        if r.status_code != 200:  # the whole request refused (e.g. too large): nothing was taken
            err = _error(r)
            return {s: ItemResult(r.status_code, 0, None, err) for s in items}
        out = {}
        for s, res in zip(items, r.json()["results"], strict=True):
            out[s] = ItemResult(
                int(res["status"]), int(res.get("accepted", 0)), res.get("warmup_remaining"), res.get("error")
            )
        return out

    def reset(self, symbol: str) -> ItemResult:
        """DELETE /v1/streams/{symbol}: forget its stream; `warmup_remaining` is how many candles it needs."""
        r = self._request("DELETE", f"/v1/streams/{symbol}")
        if r.status_code != 200:
            return ItemResult(r.status_code, 0, None, _error(r))
        return ItemResult(200, 0, int(r.json().get("warmup_remaining", 0)))
