"""Serving benchmark (run on demand): `python benchmarks/bench_serving.py [--quick]`.

Measures, on the LightGBM bundle (5 horizons x 200 trees, fitted on real FILUSDT candles):
  1. onnxruntime session options (threads, execution mode, spinning, graph optimisation, optimised-model
     cache): load time and single-row p50/p99 of `session.run`;
  2. in-process `Predictor.update` p50/p99 (streaming features + model; and as the server runs it: shadow,
     prediction log, metrics), the features and the model alone;
  3. HTTP `POST /v1/candles` (one candle per request) p50/p99 over 1 keep-alive connection (httpx client, and
     a minimal socket client that leaves out the client's own cost), and throughput with 16 connections
     (16 symbols, one stream each), client in another process, loopback;
  4. resident memory (VmRSS / VmHWM, anonymous vs shared-library pages) of the serving process with
     champion + challenger loaded, and whether it mapped pandas/pyarrow/mlflow/torch/... (it must not).
The server is `python -m serving.server` (uvloop + httptools when installed, see `serving.server.uvicorn_impl`).
Writes `benchmarks/results/serving.json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO.parent / "shared" / "data"


def pct(xs_ns: list[int] | np.ndarray) -> dict[str, float]:
    a = np.asarray(xs_ns, dtype=np.float64) / 1e3  # µs
    return {
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "mean_us": round(float(a.mean()), 1),
        "n": int(a.size),
    }


def candles(n: int, month: int = 0):
    from pipelines.sources.binance_files import read_klines

    return (
        read_klines(sorted(DATA.glob("FILUSDT-1m-2023-*.zip"))[month], "FILUSDT")
        .iloc[:n]
        .reset_index(drop=True)
    )


def bundle(quick: bool) -> Path:
    """The LightGBM bundle, cached under benchmarks/results (fitting takes a minute on 2 cores)."""
    from tests.fixtures.bundles import lightgbm_bundle

    trees = 50 if quick else 200
    d = RESULTS / f"bundle_lgb_{trees}"
    if not (d / "model.onnx").exists():
        t0 = time.time()
        lightgbm_bundle(d, candles(20_000), n_estimators=trees)
        print(f"fitted LightGBM bundle ({trees} trees x 5 horizons) in {time.time() - t0:.0f}s")
    return d


def bench_session_options(d: Path, runs: int) -> list[dict]:
    import onnxruntime as ort

    from pipelines.contracts.bundle import read_bundle
    from serving.config import RuntimeConfig
    from serving.runtime import session_options

    onnx_bytes, manifest = read_bundle(d)
    x = np.random.default_rng(0).normal(size=(1, len(manifest.feature_set.names))).astype(np.float32)
    variants = {
        "default (1 thread, sequential, no spin, opt all)": RuntimeConfig(),
        "intra 2 threads": RuntimeConfig(intra_op_threads=2),
        "intra 2 threads + spinning": RuntimeConfig(intra_op_threads=2, allow_spinning=True),
        "spinning on (1 thread)": RuntimeConfig(allow_spinning=True),
        "parallel execution, inter 2": RuntimeConfig(execution_mode="parallel", inter_op_threads=2),
        "graph opt disable": RuntimeConfig(graph_optimization="disable"),
        "graph opt basic": RuntimeConfig(graph_optimization="basic"),
        "optimised-model cache": RuntimeConfig(optimized_model_cache=True),
    }
    out = []
    for name, cfg in variants.items():
        cache = RESULTS / "ort_cache.onnx"
        cache.unlink(missing_ok=True)
        t0 = time.perf_counter()
        sess = ort.InferenceSession(
            onnx_bytes, sess_options=session_options(cfg, cache), providers=["CPUExecutionProvider"]
        )
        load_ms = (time.perf_counter() - t0) * 1e3
        if cfg.optimized_model_cache:  # second load from the optimised file: what the cache buys
            so = session_options(cfg.model_copy(update={"optimized_model_cache": False}))
            t0 = time.perf_counter()
            sess = ort.InferenceSession(str(cache), sess_options=so, providers=["CPUExecutionProvider"])
            load_ms = (time.perf_counter() - t0) * 1e3
        for _ in range(200):
            sess.run(["returns"], {"features": x})
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            sess.run(["returns"], {"features": x})
            ts.append(time.perf_counter_ns() - t0)
        out.append({"variant": name, "load_ms": round(load_ms, 1), **pct(ts)})
    return out


def bench_predictor(d: Path, n: int) -> dict:
    from pipelines.features import StreamingFeatures, get_feature_set
    from serving.config import RoutingConfig, RuntimeConfig
    from serving.metrics import ServingMetrics
    from serving.predictor import Predictor
    from serving.predlog import PredictionLog
    from serving.runtime import load_model
    from tests.fixtures.bundles import candle_records

    warm = get_feature_set("core27").warmup
    recs = candle_records(candles(warm + n, month=1))

    def timed(pred: Predictor) -> dict:
        for r in recs[:warm]:
            pred.update(r)
        ts = []
        for r in recs[warm:]:
            t0 = time.perf_counter_ns()
            pred.update(r)
            ts.append(time.perf_counter_ns() - t0)
        return pct(ts)

    model = load_model(d, RuntimeConfig())
    out = {"update": timed(Predictor(model))}  # champion only, no log: features + model + bookkeeping
    import serving.predlog as predlog

    metrics = ServingMetrics()

    def shadow_logged(subdir: str) -> dict:
        """What the HTTP server does per candle: shadow (both arms score), prediction log, metrics."""
        log = PredictionLog(RESULTS / "tmp" / subdir).start()
        try:
            return timed(
                Predictor(
                    model,
                    load_model(d, RuntimeConfig()),
                    RoutingConfig(mode="shadow"),
                    log,
                    observer=metrics.observe,
                )
            )
        finally:
            log.close()

    out["update_shadow_logged"] = shadow_logged("predlog")
    # the same with the log writer encoding whole batches without yielding the GIL (as before the fix)
    saved, predlog.YIELD_EVERY = predlog.YIELD_EVERY, 1 << 30
    try:
        out["update_shadow_logged_writer_not_yielding"] = shadow_logged("predlog-noyield")
    finally:
        predlog.YIELD_EVERY = saved
    sf = StreamingFeatures("core27", 60_000)  # features alone, for the split
    for r in recs[:warm]:
        sf.update(r)
    fts, rows = [], []
    for r in recs[warm:]:
        t0 = time.perf_counter_ns()
        row = sf.update(r)
        fts.append(time.perf_counter_ns() - t0)
        rows.append(row)
    out["features_only"] = pct(fts)
    xs = np.asarray(rows, dtype=np.float32)  # the model alone on the same (real, varying) rows
    mts = []
    for i in range(len(xs)):
        t0 = time.perf_counter_ns()
        model.run(xs[i : i + 1])
        mts.append(time.perf_counter_ns() - t0)
    out["model_only"] = pct(mts)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(bundles: list[Path], challenger: Path | None, home: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "serving.yaml"
    cfg.write_text("routing:\n  mode: shadow\n")  # champion + challenger both score: the heavier case
    args = [
        sys.executable,
        "-m",
        "serving.server",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--config",
        str(cfg),
    ]
    for b in bundles:
        args += ["--bundle", str(b)]
    if challenger:
        args += ["--challenger-bundle", str(challenger)]
    env = {**os.environ, "KAIROS_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("serving process did not become ready")


HEAVY = ("pandas", "pyarrow", "mlflow", "torch", "great_expectations", "lightgbm", "sklearn", "scipy")


def _rss(pid: int) -> dict:
    """VmRSS/VmHWM, the anonymous vs file-backed (shared-library code) split, and which heavy
    libraries the process has mapped (a C extension of each is mapped once it is imported)."""
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(next(line.split()[1] for line in status.splitlines() if line.startswith(k)))  # noqa: E731
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {
        "rss_mb": round(get("VmRSS:") / 1024, 1),
        "hwm_mb": round(get("VmHWM:") / 1024, 1),
        "rss_anon_mb": round(get("RssAnon:") / 1024, 1),
        "rss_file_mb": round(get("RssFile:") / 1024, 1),
        "heavy_libraries_mapped": [h for h in HEAVY if f"/site-packages/{h}/" in maps],
    }


CLIENT = r"""
import asyncio, json, sys, time
import httpx
base, n, conns, feed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.load(open(sys.argv[4]))
warm, stream = feed["warm"], feed["stream"]

async def main():
    lat = []
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        syms = feed["symbols"][:conns]
        await asyncio.gather(*(client.post("/v1/candles", json={"symbol": s, "candles": warm}) for s in syms))
        t0 = time.perf_counter()
        await asyncio.gather(*(one_stream(client, s, lat) for s in syms))
        wall = time.perf_counter() - t0
    print(json.dumps({"lat_ns": lat, "wall_s": wall}))

async def one_stream(client, symbol, lat):
    for c in stream[:n]:
        t0 = time.perf_counter_ns()
        r = await client.post("/v1/candles", json={"symbol": symbol, "candles": [c]})
        lat.append(time.perf_counter_ns() - t0)
        assert r.status_code == 200 and r.json()["prediction"], r.text

asyncio.run(main())
"""


RAW_CLIENT = r"""
import json, socket, sys, time
base, n, feed = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
host, port = base.split("//")[1].split(":")
sock = socket.create_connection((host, int(port)))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rfile = sock.makefile("rb")

def post(body):
    sock.sendall(b"POST /v1/candles HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    size = 0
    while (line := rfile.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            size = int(line.split(b":")[1])
    return rfile.read(size)

post(json.dumps({"symbol": "FILUSDT", "candles": feed["warm"]}).encode())
bodies = [json.dumps({"symbol": "FILUSDT", "candles": [c]}).encode() for c in feed["stream"][:n]]  # built up front
lat = []
for b in bodies:
    t0 = time.perf_counter_ns()
    r = post(b)
    lat.append(time.perf_counter_ns() - t0)
    assert b'"prediction":{' in r, r
print(json.dumps({"lat_ns": lat, "wall_s": sum(lat) / 1e9}))
"""


def _raw_client(base: str, n: int, feed: Path) -> dict:
    """One keep-alive connection from a minimal socket client with the bodies built up front: the
    server's latency plus loopback, without httpx's own per-request cost (~1.5 ms on the shared box)."""
    out = subprocess.run(
        [sys.executable, "-c", RAW_CLIENT, base, str(n), str(feed)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    res = json.loads(out.stdout)
    return {**pct(res["lat_ns"]), "req_per_s": round(len(res["lat_ns"]) / res["wall_s"], 1)}


def _client(base: str, n: int, conns: int, feed: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, base, str(n), str(conns), str(feed)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    res = json.loads(out.stdout)
    return {
        **pct(res["lat_ns"]),
        "wall_s": round(res["wall_s"], 2),
        "req_per_s": round(len(res["lat_ns"]) / res["wall_s"], 1),
    }


def _symbol_copy(src: Path, dst: Path, symbol: str) -> Path:
    """The same model registered for another symbol (throughput: one stream per connection)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "model.onnx", dst / "model.onnx")
    m = json.loads((src / "manifest.json").read_text())
    m["symbol"], m["model_name"] = symbol, f"returns-{symbol}-1m"
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def bench_http(d: Path, n: int, tmp: Path) -> dict:
    from pipelines.features import get_feature_set
    from tests.fixtures.bundles import api_candle, candle_records

    warm = get_feature_set("core27").warmup
    recs = [api_candle(r) for r in candle_records(candles(warm + n, month=2))]
    symbols = [f"SYM{i:02d}" for i in range(16)]
    feed = tmp / "feed.json"
    feed.write_text(
        json.dumps({"warm": recs[:warm], "stream": recs[warm:], "symbols": ["FILUSDT"] + symbols})
    )
    out: dict = {}
    proc, base = _serve([d], _symbol_copy(d, tmp / "challenger", "FILUSDT"), tmp / "home1")
    try:
        out["memory_loaded"] = _rss(proc.pid)
        out["one_connection"] = _client(base, n, 1, feed)
        out["memory_after_requests"] = _rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    proc, base = _serve([d], _symbol_copy(d, tmp / "challenger", "FILUSDT"), tmp / "home1b")  # a fresh stream
    try:
        out["one_connection_raw_client"] = _raw_client(base, n, feed)
    finally:
        proc.terminate()
        proc.wait(10)
    feed.write_text(json.dumps({"warm": recs[:warm], "stream": recs[warm:], "symbols": symbols}))
    copies = [_symbol_copy(d, tmp / s, s) for s in symbols]
    proc, base = _serve(copies, None, tmp / "home2")
    try:
        out["sixteen_connections"] = _client(base, max(n // 8, 50), 16, feed)
    finally:
        proc.terminate()
        proc.wait(10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small model and loops (smoke run)")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    d = bundle(args.quick)
    runs, n = (500, 300) if args.quick else (5000, 2000)
    tmp = RESULTS / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    from serving.server import uvicorn_impl

    res = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
            "python": platform.python_version(),
        },
        "server": uvicorn_impl(),  # what `python -m serving.server` runs uvicorn with
        "bundle": {
            "path": str(d.relative_to(REPO)),
            "trees_per_horizon": 50 if args.quick else 200,
            "horizons": 5,
        },
        "session_options": bench_session_options(d, runs),
        "predictor": bench_predictor(d, n),
        "http": bench_http(d, n, tmp),
    }
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    (RESULTS / "serving.json").write_text(json.dumps(res, indent=2))

    print(
        f"\nserving benchmark ({res['machine']['cpus']} CPUs, load avg {res['machine']['load_avg_at_start'][0]:.1f})"
    )
    print(f"{'onnxruntime session option':<50}{'load ms':>9}{'p50 µs':>9}{'p99 µs':>9}")
    for r in res["session_options"]:
        print(f"{r['variant']:<50}{r['load_ms']:>9}{r['p50_us']:>9}{r['p99_us']:>9}")
    p = res["predictor"]
    print(
        f"\nPredictor.update (features + model): p50 {p['update']['p50_us']} µs, p99 {p['update']['p99_us']} µs "
        f"(features alone p50 {p['features_only']['p50_us']} µs, model alone p50 {p['model_only']['p50_us']} µs)"
        "   goal p99 <= 100 µs"
    )
    print(
        f"Predictor.update, shadow + log + metrics: p50 {p['update_shadow_logged']['p50_us']} µs, "
        f"p99 {p['update_shadow_logged']['p99_us']} µs (log writer not yielding: "
        f"p99 {p['update_shadow_logged_writer_not_yielding']['p99_us']} µs)"
    )
    h = res["http"]
    print(
        f"HTTP POST /v1/candles, 1 connection: p50 {h['one_connection']['p50_us'] / 1e3:.2f} ms, "
        f"p99 {h['one_connection']['p99_us'] / 1e3:.2f} ms   goal p50 <= 0.5 ms"
    )
    print(
        f"HTTP POST /v1/candles, 1 connection, minimal socket client: p50 "
        f"{h['one_connection_raw_client']['p50_us'] / 1e3:.2f} ms, p99 {h['one_connection_raw_client']['p99_us'] / 1e3:.2f} ms"
    )
    print(
        f"HTTP 16 connections: {h['sixteen_connections']['req_per_s']} req/s "
        f"(p50 {h['sixteen_connections']['p50_us'] / 1e3:.2f} ms)"
    )
    print(
        f"memory, champion + challenger loaded: RSS {h['memory_loaded']['rss_mb']} MB, after requests "
        f"{h['memory_after_requests']['rss_mb']} MB (peak {h['memory_after_requests']['hwm_mb']} MB)   goal <= 100 MB; "
        f"heavy libraries mapped: {h['memory_loaded']['heavy_libraries_mapped']}"
    )
    print(f"written {RESULTS / 'serving.json'}")


if __name__ == "__main__":
    main()
