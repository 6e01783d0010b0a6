"""FastAPI app: REST + WebSocket predictions, model status, health, readiness and Prometheus metrics.

    POST   /v1/predict          a window of candles → prediction at its last candle (stateless)
    POST   /v1/candles          push closed candle(s) of a symbol into its stream → prediction
    DELETE /v1/streams/{symbol} forget a symbol's stream (re-sync after a gap you cannot fill)
    WS     /v1/stream           send {"symbol", "candle"} messages, receive predictions (bounded queue)
    WS     /v1/alerts           subscribe ({"symbols", "min_level"}, as query or message), receive alerts
    GET    /v1/models           loaded versions, registry aliases, load errors, routing
    GET    /healthz  /readyz    alive; ready only when every watched model has a warmed champion
    GET    /metrics             Prometheus text format

Bad input never yields a 5xx: schema errors, NaN/inf, non-increasing or gapped times, a too-short
window, an unknown symbol/model and oversized bodies get a 4xx whose `error` names the problem.
Before any handler: bearer API keys and scopes (`serving/auth.py`; off when no key is configured), then
at most `api.max_in_flight` HTTP requests at once (`InFlightLimit`: 429 + Retry-After beyond it).
`create_app(state, keys)` takes a built `ServingState` and `KeyRing` (no import-time side effects).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.contracts.errors import KairosError, StreamError
from pipelines.contracts.schema import INTERVAL_MS
from serving.alerts import Subscription
from serving.auth import AuthMiddleware, KeyRing
from serving.predictor import InputError, Prediction, Predictor, UnknownSymbol
from serving.schemas import CandlesIn, CandlesOut, ErrorOut, PredictIn, PredictionOut, StreamIn
from serving.state import ServingState

log = logging.getLogger("kairos.serving")


class ApiError(Exception):
    """Raised inside handlers; rendered as {"error": message} with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def prediction_out(p: Prediction) -> dict[str, Any]:
    conf = p.confidence or (None,) * len(p.horizons)
    return {
        "request_id": p.request_id,
        "symbol": p.symbol,
        "interval": p.interval,
        "open_time": p.open_time,
        "model": p.model,
        "version": p.version,
        "arm": p.arm,
        "latency_us": round(p.latency_us, 2),
        # `value` is the task's output; a signed output also carries the `direction` it calls, and a
        # "returns" output (log returns) its value under `log_return`, the key that predates tasks.
        "horizons": [
            {
                "horizon": h,
                "value": v,
                "confidence": c,
                **({"direction": d} if p.signed else {}),
                **({"log_return": v} if p.output == "returns" else {}),
            }
            for h, v, d, c in zip(p.horizons, p.values, p.directions, conf)
        ],
        # the bundle's other outputs, only when it has them (whale: anomaly_score, threat_level, ...)
        **({"extras": dict(p.extras)} if p.extras is not None else {}),
        **(
            {"top_features": [{"name": n, "deviation": d} for n, d in p.top_features]}
            if p.top_features is not None
            else {}
        ),
        **({"alert": dict(p.alert)} if p.alert is not None else {}),
    }


def _validation_message(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over `limit` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length" and (not v.isdigit() or int(v) > self.limit):
                return await self._reject(send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Any) -> None:
        body = json.dumps(
            {"error": f"request body exceeds {self.limit} bytes; send fewer candles per request"}
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    pass


PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # never refused for load: cheap, and must answer


class InFlight:
    """HTTP requests admitted and not yet answered (one process, one event loop: no lock needed)."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0


class InFlightLimit:
    """Pure ASGI middleware: at most `limit` HTTP requests admitted at once; the next one gets 429 +
    `Retry-After` at once. Nothing waits in a queue of ours: a refused client retries later (or another
    replica), and an admitted request waits for at most `limit - 1` others.

    The handlers do their CPU work on the event loop without awaiting, so requests that arrived but
    have not started wait as ready tasks on the loop, where a plain counter cannot see them. Each
    admitted request therefore yields once (`asyncio.sleep(0)`, ~5 µs) after counting itself: every
    request already queued on the loop counts itself, or is refused, before any admitted one works.
    A refusal costs ~20 µs (no body read, no validation), a prediction request 0.5-10 ms.
    """

    def __init__(self, app: Any, load: InFlight, retry_after_s: int, on_refused: Any):
        self.app, self.load, self.on_refused = app, load, on_refused
        body = json.dumps(
            {
                "error": f"overloaded: {load.limit} requests in flight (api.max_in_flight); "
                f"retry after {retry_after_s} s"
            }
        ).encode()
        self._start = {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after_s).encode()),
            ],
        }
        self._body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        load = self.load
        if load.count >= load.limit:
            self.on_refused("overload")
            await send(self._start)
            await send(self._body)
            return
        load.count += 1
        try:
            await asyncio.sleep(0)  # let the requests queued behind this one count themselves
            await self.app(scope, receive, send)
        finally:
            load.count -= 1


def create_app(state: ServingState, keys: KeyRing | None = None) -> FastAPI:
    """The ASGI app over `state`; the caller owns `state.start()` / `state.close()` (see `lifespan`).
    `keys`: the API keys (`serving.auth.load_keyring`); None or empty = auth off."""
    api = state.cfg.api
    keys = keys or KeyRing()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="Kairos serving",
        version="1",
        lifespan=lifespan,
        responses={422: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
    )
    app.add_middleware(BodyLimit, limit=api.max_body_bytes)
    # the last added runs first: auth, then the in-flight bound, then the body limit
    if api.max_in_flight is not None:
        load = InFlight(api.max_in_flight)
        state.metrics.watch_in_flight(lambda: load.count)
        app.add_middleware(
            InFlightLimit, load=load, retry_after_s=api.retry_after_s, on_refused=state.metrics.reject
        )
    app.add_middleware(
        AuthMiddleware, keys=keys, open_paths=api.auth.open_paths, on_refused=state.metrics.reject
    )
    if keys:
        log.info(
            "API auth on: %d key(s) (%s); open without a key: %s",
            len(keys),
            ", ".join(keys.names),
            " ".join(api.auth.open_paths) or "nothing",
        )
    else:
        log.warning(
            "API auth off: no API key configured (%s or api.auth.keys_file); every route is open",
            api.auth.keys_env,
        )
    app.state.serving = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        state.metrics.errors.labels(request.url.path, str(e.status)).inc()
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (undecodable body 400, unknown route 404, wrong method 405)
        if e.status_code >= 400:
            state.metrics.errors.labels(
                request.url.path if e.status_code != 404 else "unknown", str(e.status_code)
            ).inc()
        return JSONResponse(
            {"error": str(e.detail)}, status_code=e.status_code, headers=getattr(e, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        state.metrics.errors.labels(request.url.path, "422").inc()
        errs = e.errors()
        return JSONResponse(
            {"error": _validation_message(errs), "detail": _jsonable(errs[:5])}, status_code=422
        )

    def predictor_for(symbol: str, interval: str | None, model: str | None = None) -> Predictor:
        if model is not None:
            slot = state.slots.get(model)
            if slot is None:
                raise ApiError(404, f"unknown model {model!r}; served models: {sorted(state.slots)}")
            pred = slot.predictor
            if pred is None:
                raise ApiError(503, f"model {model!r} has no champion loaded yet; see GET /v1/models")
            if not pred.serves(symbol):
                if pred.universe_name is None:
                    raise ApiError(422, f"model {model!r} serves symbol {pred.symbol!r}, not {symbol!r}")
                raise ApiError(
                    404,
                    f"unknown symbol {symbol!r} for model {model!r} (universe {pred.universe_name}: "
                    f"{_listing(pred.symbols)})",
                )
        else:
            pred = state.by_symbol(symbol)
            if pred is None:
                raise ApiError(
                    404, f"unknown symbol {symbol!r}; served symbols: {_listing(state.served_symbols())}"
                )
        if interval is not None and interval != pred.interval:
            raise ApiError(422, f"interval {interval!r} does not match model {pred.name} ({pred.interval!r})")
        return pred

    def records(body: CandlesIn, pred: Predictor, contiguous: bool) -> list[dict[str, Any]]:
        step = INTERVAL_MS.get(pred.interval)
        recs = [c.to_record(body.symbol, pred.interval) for c in body.candles]
        for i, r in enumerate(recs):
            if step and r["open_time"] % step:
                raise ApiError(
                    422, f"candles.{i}.open_time {r['open_time']} is not aligned to {pred.interval} candles"
                )
            if i and r["open_time"] <= recs[i - 1]["open_time"]:
                raise ApiError(
                    422, f"candles.{i}.open_time is not after candles.{i - 1}: times must strictly increase"
                )
            if contiguous and i and step and r["open_time"] - recs[i - 1]["open_time"] != step:
                raise ApiError(
                    422,
                    f"candles.{i}: gap after candles.{i - 1}; a window must be consecutive {pred.interval} candles",
                )
        return recs

    def routing_key(request: Request | WebSocket, symbol: str) -> str:
        return request.headers.get(state.cfg.routing.key_header) or symbol

    @app.post("/v1/predict", response_model=PredictionOut)
    async def predict(body: PredictIn, request: Request) -> Any:
        """Stateless prediction at the last candle of a window of consecutive closed candles."""
        if len(body.candles) > api.max_window:
            raise ApiError(422, f"window of {len(body.candles)} candles exceeds max_window={api.max_window}")
        pred = predictor_for(body.symbol, body.interval, body.model)
        recs = records(body, pred, contiguous=True)
        try:
            p = pred.predict(recs, routing_key(request, body.symbol), request.headers.get("x-request-id"))
        except UnknownSymbol as e:
            raise ApiError(404, str(e)) from None
        except (InputError, StreamError) as e:
            raise ApiError(422, str(e)) from None
        return JSONResponse(prediction_out(p))

    @app.post("/v1/candles", response_model=CandlesOut)
    async def candles(body: CandlesIn, request: Request) -> Any:
        """Push closed candle(s), oldest first, into the symbol's stream; the prediction at the last one."""
        if len(body.candles) > api.max_batch:
            raise ApiError(
                422, f"{len(body.candles)} candles exceed max_batch={api.max_batch}; split the upload"
            )
        pred = predictor_for(body.symbol, body.interval, body.model)
        recs = records(body, pred, contiguous=False)
        key, rid = routing_key(request, body.symbol), request.headers.get("x-request-id")
        p, accepted = None, 0
        try:
            for r in recs:
                p = pred.update(r, key, rid)
                accepted += 1
        except StreamError as e:
            why = f"{e} (accepted {accepted} of {len(recs)}; DELETE /v1/streams/{body.symbol} to re-sync)"
            raise ApiError(409, why) from None
        except UnknownSymbol as e:  # the universe changed under the request (hot reload)
            raise ApiError(404, str(e)) from None
        except InputError as e:
            raise ApiError(422, f"{e} (accepted {accepted} of {len(recs)})") from None
        return JSONResponse(
            {
                "symbol": body.symbol,
                "accepted": accepted,
                "warmup_remaining": pred.warmup_left(body.symbol),
                "prediction": None if p is None else prediction_out(p),
            }
        )

    @app.post("/v1/candles/batch")
    async def candles_batch(body: list[CandlesIn], request: Request) -> Any:
        """Closed candles of many symbols in one request: `[{"symbol", "candles": [...], "model"?}, ...]`,
        each item as the body of POST /v1/candles (the body limit bounds the whole request). One answer
        per item, in order: `{"symbol", "status": 200, "accepted", "warmup_remaining", "prediction"}` or
        `{"symbol", "status": 404|409|422, "error", "accepted"}` (an item's failure is its answer only).
        The newest candles of one model's items are scored together, one model run per arm
        (`Predictor.update_many`)."""
        if not body or len(body) > api.max_batch:
            raise ApiError(422, f"{len(body)} items: send 1 to max_batch={api.max_batch} per request")
        key, rid = request.headers.get(state.cfg.routing.key_header), request.headers.get("x-request-id")
        results: list[dict[str, Any]] = [{}] * len(body)
        groups: dict[int, tuple[Predictor, list[tuple[int, list[dict[str, Any]]]]]] = {}
        for i, item in enumerate(body):
            try:
                if len(item.candles) > api.max_batch:
                    raise ApiError(422, f"{len(item.candles)} candles exceed max_batch={api.max_batch}")
                pred = predictor_for(item.symbol, item.interval, item.model)
                groups.setdefault(id(pred), (pred, []))[1].append((i, records(item, pred, contiguous=False)))
            except ApiError as e:
                results[i] = {"symbol": item.symbol, "status": e.status, "error": str(e), "accepted": 0}
        for pred, entries in groups.values():
            answers = pred.update_many([(body[i].symbol, recs) for i, recs in entries], key, rid)
            for (i, recs), (p, accepted, err) in zip(entries, answers):
                sym = body[i].symbol
                if err is None:
                    out = None if p is None else prediction_out(p)
                    left = pred.warmup_left(sym)
                    results[i] = {"symbol": sym, "status": 200, "accepted": accepted}
                    results[i].update(warmup_remaining=left, prediction=out)
                    continue
                status = 422 if not isinstance(err, StreamError) else 409
                status = 404 if isinstance(err, UnknownSymbol) else status
                why = f"{err} (accepted {accepted} of {len(recs)})"
                results[i] = {"symbol": sym, "status": status, "error": why, "accepted": accepted}
        for r in results:
            if r["status"] != 200:
                state.metrics.errors.labels(request.url.path, str(r["status"])).inc()
        return JSONResponse({"results": results})

    @app.delete("/v1/streams/{symbol}")
    async def reset_stream(
        symbol: Annotated[str, FPath(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._:-]+$")],
        model: Annotated[str | None, Query(max_length=200, description="registered model name")] = None,
    ) -> dict[str, Any]:
        """Forget the stream of `symbol`; predictions resume after the feature warm-up."""
        pred = predictor_for(symbol, None, model)
        pred.reset(symbol if pred.universe_name is not None else None)
        return {"symbol": symbol, "reset": True, "warmup_remaining": pred.warmup_left(symbol)}

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=api.ws_queue)

        async def reader() -> None:
            try:
                while True:
                    await queue.put(await ws.receive_text())  # blocks when full: back-pressure on the socket
            except (WebSocketDisconnect, RuntimeError):
                await queue.put(None)

        task = asyncio.create_task(reader())
        try:
            while (msg := await queue.get()) is not None:
                await ws.send_text(json.dumps(_ws_answer(msg, ws)))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            task.cancel()

    def _ws_answer(msg: str, ws: WebSocket) -> dict[str, Any]:
        if len(msg) > api.max_body_bytes:
            return {"type": "error", "error": f"message exceeds {api.max_body_bytes} bytes"}
        try:
            m = StreamIn.model_validate_json(msg)
            pred = predictor_for(m.symbol, None, m.model)
            p = pred.update(m.candle.to_record(m.symbol, pred.interval), routing_key(ws, m.symbol))
        except ValidationError as e:
            return {"type": "error", "error": _validation_message(e.errors())}
        except (ApiError, StreamError, InputError) as e:
            return {"type": "error", "error": str(e)}
        if p is None:
            return {"type": "warming_up", "symbol": m.symbol, "warmup_remaining": pred.warmup_left(m.symbol)}
        return {"type": "prediction", **prediction_out(p)}

    @app.websocket("/v1/alerts")
    async def alerts(ws: WebSocket) -> None:
        """Alerts as they are raised. Subscribe with query parameters (`?symbols=A,B&min_level=3`) and/or
        send `{"symbols": [...] | null, "min_level": n}` at any time to replace the subscription; each
        subscription is acknowledged (`{"type": "subscribed", ...}`) before the alerts it selects."""
        await ws.accept()
        hub, default = state.alerts, state.cfg.alerts.min_level
        query: dict[str, Any] = dict(ws.query_params)
        if "symbols" in query:
            query["symbols"] = ",".join(ws.query_params.getlist("symbols"))
        try:
            sub = Subscription.parse(query, default)
        except ValueError as e:
            await ws.send_text(json.dumps({"type": "error", "error": str(e)}))
            await ws.close(code=1008)
            return
        client = hub.subscribe(sub, asyncio.get_running_loop())

        def ack(s: Subscription) -> str:
            served = set(state.served_symbols())
            missing = sorted(s.symbols - served) if s.symbols is not None else []
            return json.dumps({"type": "subscribed", **s.describe(), "not_served": missing})

        client.push(ack(sub))

        async def reader() -> None:
            try:
                while True:
                    text = await ws.receive_text()
                    try:
                        if len(text) > 65_536:
                            raise ValueError("subscription message exceeds 65536 bytes")
                        new = Subscription.parse(json.loads(text), default)
                    except ValueError as e:  # JSONDecodeError is a ValueError
                        client.push(json.dumps({"type": "error", "error": f"subscription refused: {e}"}))
                        continue
                    client.sub = new
                    client.push(ack(new))
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                client.close()

        task = asyncio.create_task(reader())
        try:
            while (msg := await client.get()) is not None:
                await ws.send_text(msg)
        except Exception:  # the client went away mid-send (disconnect, reset): end this connection only
            pass
        finally:
            task.cancel()
            hub.unsubscribe(client)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """Loaded versions per arm, the registry's aliases, load errors, routing."""
        return {"models": state.describe(), "ready": state.ready}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Alive; per served model and arm: version, last prediction (UTC ISO), drift status ("ok" |
        "drift" | "warming up (n/window rows)" | "no reference profile" | ...)."""
        return {"status": "ok", "models": state.health()}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok = state.ready
        return JSONResponse(
            {"ready": ok, "models": {s.name: s.predictor is not None for s in state.slots.values()}},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def _listing(symbols: list[str] | tuple[str, ...], limit: int = 50) -> str:
    """A symbol list for an error message, cut at `limit` names."""
    names = sorted(symbols)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


def _jsonable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Location, message and type only: the rejected `input` may hold NaN/bytes, which JSON cannot carry."""
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
        for e in errors
    ]


__all__ = ["ApiError", "KairosError", "create_app", "prediction_out"]
