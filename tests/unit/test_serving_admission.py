"""Overload and shutdown pieces in-process: the in-flight bound (429 + Retry-After, never a queue),
the prediction log's close (everything queued written and fsynced), and exit status 0 after SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from serving.app import InFlight, InFlightLimit
from serving.predlog import PredictionLog
from serving.server import run_until_signal
from tests.unit.test_serving_predlog import MODEL, record


def _scope(path: str = "/v1/candles") -> dict:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


async def _call(mw, path: str = "/v1/candles") -> tuple[int, dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(msg: dict) -> None:
        sent.append(msg)

    await mw(_scope(path), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


def _limited(inner, limit: int) -> tuple[InFlightLimit, InFlight, list[str]]:
    refused: list[str] = []
    load = InFlight(limit)
    return InFlightLimit(inner, load=load, retry_after_s=2, on_refused=refused.append), load, refused


def test_requests_queued_on_the_event_loop_are_counted_before_any_works():
    """Handlers compute without awaiting: 10 requests that arrived together are 10 ready tasks. Only
    `limit` of them may work; the others are answered 429 at once instead of waiting their turn."""
    worked: list[float] = []

    async def cpu_handler(scope, receive, send) -> None:  # no await before the work, like the real ones
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.005:
            pass
        worked.append(t0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    mw, load, refused = _limited(cpu_handler, limit=3)

    async def burst() -> list[tuple[int, dict]]:
        return await asyncio.gather(*(_call(mw) for _ in range(10)))

    out = asyncio.run(burst())
    statuses = sorted(s for s, _ in out)
    assert statuses == [200] * 3 + [429] * 7
    assert len(worked) == 3 and refused == ["overload"] * 7 and load.count == 0
    for status, headers in out:
        if status == 429:
            assert headers["retry-after"] == "2" and headers["content-type"] == "application/json"
    # once they are answered, the next requests are admitted again
    assert asyncio.run(_call(mw))[0] == 200


def test_awaiting_requests_hold_their_slot_and_probes_are_never_refused():
    async def main() -> None:
        gate = asyncio.Event()

        async def slow(scope, receive, send) -> None:
            if scope["path"].startswith("/v1/"):
                await gate.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        mw, load, refused = _limited(slow, limit=2)
        first = [asyncio.create_task(_call(mw)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert load.count == 2
        status, headers = await _call(mw)  # answered while the two others wait
        assert (status, headers["retry-after"]) == (429, "2")
        body = json.loads(InFlightLimit(slow, InFlight(2), 2, print)._body["body"])
        assert body == {"error": "overloaded: 2 requests in flight (api.max_in_flight); retry after 2 s"}
        for path in ("/healthz", "/readyz", "/metrics"):  # not counted: a busy replica still answers probes
            assert (await _call(mw, path))[0] == 200
        gate.set()
        assert [s for s, _ in await asyncio.gather(*first)] == [200, 200]
        assert load.count == 0 and refused == ["overload"]

    asyncio.run(main())


def test_close_writes_and_fsyncs_everything_queued(tmp_path):
    # nothing would be written before close: the batch never fills and its deadline is far away
    log = PredictionLog(tmp_path, flush_every=1_000_000, flush_interval_ms=600_000).start()
    for i in range(20_000):
        assert log.append(record(i))
    time.sleep(0.05)
    assert log.written == 0
    log.close()
    assert log.written == 20_000 and log.pending == 0
    lines = (tmp_path / MODEL).glob("*.jsonl").__next__().read_text().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [f"r{i}" for i in range(20_000)]


def test_close_writes_records_the_writer_did_not_see(tmp_path):
    log = PredictionLog(tmp_path, flush_every=8)  # writer never started (or already gone)
    for i in range(5):
        log.append(record(i))
    log.close()
    assert log.written == 5
    assert len(next((tmp_path / MODEL).glob("*.jsonl")).read_text().splitlines()) == 5


class _FakeServer:
    """Stands in for uvicorn.Server: handles SIGTERM, then re-raises it as uvicorn does."""

    def __init__(self, graceful: bool):
        self.graceful, self.should_exit, self.started = graceful, False, True

    def run(self) -> None:
        if self.graceful:
            self.should_exit = True  # uvicorn's handler ran: graceful shutdown done
        signal.raise_signal(signal.SIGTERM)  # uvicorn re-raises with the handler installed before it


def test_sigterm_after_a_graceful_stop_exits_0_and_before_start_stops():
    before = signal.getsignal(signal.SIGTERM)
    run_until_signal(_FakeServer(graceful=True))  # returns: status 0
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(SystemExit) as e:
        run_until_signal(_FakeServer(graceful=False))
    assert e.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
