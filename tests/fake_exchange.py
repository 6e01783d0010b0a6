"""A local stand-in for Binance's spot REST API, for ccxt tests without the internet.

`FakeBinance(rows)` serves `/api/v3/exchangeInfo` (one market) and `/api/v3/klines` (paged by
startTime/endTime/limit, rows as Binance sends them: 12 fields, prices as strings) on 127.0.0.1
from a thread. `fail_next` makes the next klines requests answer 503 (ccxt: ExchangeNotAvailable,
a NetworkError) to exercise retries; `requests` records every klines query.

    with FakeBinance(rows) as fake:
        ex_config = fake.ccxt_config()   # point ccxt.binance at it
"""

from __future__ import annotations

import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


def load_kline_rows(zip_path: Path, n: int | None = None) -> list[list]:
    """Rows of a futures kline dump as Binance's REST API returns them (ints for times/counts)."""
    with zipfile.ZipFile(zip_path) as zf:
        lines = zf.read(zf.namelist()[0]).decode().splitlines()[1:]  # skip the header
    rows = []
    for ln in lines[:n]:
        f = ln.split(",")
        rows.append([int(f[0]), f[1], f[2], f[3], f[4], f[5], int(f[6]), f[7], int(f[8]), f[9], f[10], f[11]])
    return rows


def _market(symbol: str, base: str, quote: str) -> dict:
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "MARKET"],
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "permissions": ["SPOT"],
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.001", "maxPrice": "10000.0", "tickSize": "0.001"},
            {"filterType": "LOT_SIZE", "minQty": "0.01", "maxQty": "900000.0", "stepSize": "0.01"},
        ],
    }


class FakeBinance:
    """Threaded HTTP server imitating the two Binance spot endpoints ccxt needs for OHLCV."""

    def __init__(
        self, rows: list[list], symbol: str = "FILUSDT", base: str = "FIL", quote: str = "USDT"
    ) -> None:
        self.rows = rows
        self.symbol = symbol
        self.market = _market(symbol, base, quote)
        self.fail_next = 0
        self.requests: list[dict[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started; use `with FakeBinance(...)`"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api/v3"

    def ccxt_config(self) -> dict:
        """Config for `ccxt.binance` that reaches only this server, spot markets only, no throttling."""
        return {
            "urls": {"api": {"public": self.base_url}},
            "options": {"fetchMarkets": {"types": ["spot"]}, "defaultType": "spot", "fetchMargins": False},
            "enableRateLimit": False,
            "timeout": 5000,
        }

    def _klines(self, q: dict[str, str]) -> tuple[int, object]:
        self.requests.append(q)
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, "<html>503 Service Temporarily Unavailable</html>"  # a gateway page, not JSON
        if q.get("symbol") != self.symbol:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if q.get("interval") != "1m":
            return 400, {"code": -1120, "msg": "Invalid interval."}
        start = int(q.get("startTime", 0))
        end = int(q.get("endTime", 2**62))
        limit = min(int(q.get("limit", 500)), 1000)
        out = [r for r in self.rows if start <= r[0] <= end][:limit]
        return 200, out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/api/v3/exchangeInfo":
                    info = {"timezone": "UTC", "serverTime": 0, "rateLimits": [], "symbols": [fake.market]}
                    code, body = 200, info
                elif url.path == "/api/v3/klines":
                    code, body = fake._klines(q)
                else:
                    code, body = 404, {"code": -1, "msg": f"no route {url.path}"}
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        return Handler

    def __enter__(self) -> "FakeBinance":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
