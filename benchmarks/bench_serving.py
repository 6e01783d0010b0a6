"""Serving benchmark (run on demand): `python benchmarks/bench_serving.py [--quick] [--before FILE]`.

One run measures the four serving goals on the model users serve, and writes benchmarks/results/serving.json:

  1. in-process `Predictor.update` p99 <= 50 µs (one candle: streaming features + the model, champion only,
     prediction log off), with each step of the hot path switched on in turn (the general feature kernel +
     `session.run`; + core27's one-candle kernel; + the IO-binding row runner = as served), 5 interleaved
     rounds in a process that imports only the serving stack, the timed loop making no garbage of its own;
     the split features / model / bookkeeping, the shortcuts' parity, and the path as the server runs it
     (shadow: two models, prediction log, metrics); `session.run` options and IO binding on real rows;
  2. resident memory <= 100 MB with champion and challenger loaded, as a user starts
     `kairos serve --model returns-FILUSDT-1m` against a real `mlflow server`: the largest VmRSS in the
     process tree once /readyz answers 200 (and after the HTTP runs), where it goes (mappings, imports),
     and the same server started otherwise (the CLI's imports resident, as `kairos serve` ran before it
     exec'd the server; without `-OO`; with MALLOC_ARENA_MAX=2);
  3. HTTP `POST /v1/candles` at 1 connection in shadow mode (p50 <= 0.5 ms, p99 <= 2 ms) and at 16
     connections (>= 2,000 requests/s; 16 symbols, each its own model with champion and challenger, shadow),
     3 rounds each, measured with `wrk` (one connection per wrk thread, each streaming its symbol's candles
     in order), and in the same run MLflow's `mlflow models serve` (`--env-manager local`, one worker, like
     `kairos serve`, same session settings) on the same ONNX graph, as the peer: it is given the feature
     rows (it has no streaming features), so it does less work per request than Kairos;
  4. `POST /v1/candles/batch`, 16 symbols' candles a request: on the 16 models above, and on one universe
     model over the 16 symbols (one model run per arm a request) against 16 connections one candle each.

The model is the default returns model trained by the training path: `train_walk_forward` with the
returns task config on the real FILUSDT candles in ../shared/data (champion: the newest 30 days; challenger:
the 30 days before November), registered in MLflow by `registry.runs.log_training`. Every figure carries the
1-minute load average at the time it was measured (a shared 2-core box: other jobs move the tails).
Without `wrk` on the PATH the HTTP figures come from a Python socket client instead (labelled `client`).
`--before FILE`: a serving.json of the tree before a change (this script run with `--code-root DIR` on an
export of that commit) whose goal figures are copied beside this run's as `before`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO.parent / "shared" / "data"
SYMBOL = "FILUSDT"
NAME = f"returns-{SYMBOL}-1m"
UNIVERSE = "U16"  # the batch comparison's universe model: returns-U16-1m over SYM00..SYM15
HEAVY = (
    "pandas",
    "pyarrow",
    "mlflow",
    "torch",
    "great_expectations",
    "lightgbm",
    "sklearn",
    "scipy",
    "prefect",
)
CODE = REPO  # where the serving code under test lives (--code-root)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def pct(xs_ns: list[int] | np.ndarray) -> dict[str, float]:
    a = np.asarray(xs_ns, dtype=np.float64) / 1e3  # µs
    return {
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "mean_us": round(float(a.mean()), 1),
        "n": int(a.size),
        "load_avg_1m": load(),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> float:
    """Seconds until `url` answers 200; raises with the log's tail if the process dies or time runs out."""
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- the model ----------------------------------------------------------------------------------
def train_default(quick: bool) -> dict[str, Any]:
    """Champion and challenger: the default returns model (configs/tasks/returns.yaml `training:`) trained
    by `train_walk_forward` on real FILUSDT candles; {"champion": TrainResult, "challenger": ..., "info"}."""
    from pipelines.config import load_training_config
    from pipelines.sources.binance_files import read_many
    from pipelines.tasks import get_task, read_task_file
    from pipelines.training.walk_forward import train_walk_forward

    files = sorted(DATA.glob(f"{SYMBOL}-1m-2023-??.zip"))
    candles = read_many(files, SYMBOL, "1m").drop_duplicates("open_time", ignore_index=True)
    cfg = load_training_config(REPO / "configs", None, task="returns")
    tf = read_task_file(REPO / "configs", "returns")
    task = get_task("returns", cfg.labels.horizons, tf.options, tf.objective)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    out["champion"] = train_walk_forward(candles, symbol=SYMBOL, interval="1m", cfg=cfg, task=task)
    older = candles[candles["open_time"] < "2023-11-01"].reset_index(drop=True)
    out["challenger"] = train_walk_forward(older, symbol=SYMBOL, interval="1m", cfg=cfg, task=task)
    champ = out["champion"]
    out["info"] = {
        "trained_by": "pipelines.training.walk_forward.train_walk_forward, configs/tasks/returns.yaml",
        "feature_set": champ.manifest.feature_set.name,
        "lightgbm": cfg.lightgbm.model_dump(include={"n_estimators", "num_leaves", "linear_base"}),
        "objective": task.training_objective,
        "horizons": champ.horizons,
        "onnx_kib": round(len(champ.onnx_bytes) / 1024, 1),
        "champion_window": {k: champ.data_window[k] for k in ("start", "end", "rows")},
        "challenger_window": {k: out["challenger"].data_window[k] for k in ("start", "end", "rows")},
        "withheld_horizons": sorted(champ.below_baselines),
        "train_s": round(time.perf_counter() - t0, 1),
    }
    return out


def write_bundles(models: dict[str, Any], root: Path) -> dict[str, Path]:
    from pipelines.contracts.bundle import write_bundle

    return {
        a: write_bundle(root / a, models[a].onnx_bytes, models[a].manifest)
        for a in ("champion", "challenger")
    }


def stream_records(n: int, month: int = 1) -> list[dict[str, Any]]:
    """`n` real FILUSDT candles (Sep 2023 by default: after no training window's end) as update() records."""
    from pipelines.sources.binance_files import read_klines
    from tests.fixtures.bundles import candle_records

    path = sorted(DATA.glob(f"{SYMBOL}-1m-2023-??.zip"))[month]
    return candle_records(read_klines(path, SYMBOL).iloc[:n].reset_index(drop=True))


# ---- 1. in-process ------------------------------------------------------------------------------
def bench_session(champion: Path, runs: int) -> list[dict]:
    """`session.run` vs the IO-binding row runner, and a few session options, on real feature rows."""
    import onnxruntime as ort

    from pipelines.contracts.bundle import read_bundle
    from pipelines.features import StreamingFeatures
    from serving.config import RuntimeConfig
    from serving.runtime import session_options

    onnx_bytes, manifest = read_bundle(champion)
    sf = StreamingFeatures(manifest.feature_set.name, 60_000)
    rows = [sf.update(r) for r in stream_records(manifest.feature_set.warmup + runs)]
    xs = np.asarray(rows[manifest.feature_set.warmup :], dtype=np.float32)
    variants = {
        "serving default (1 thread, sequential, no spinning, no arena, opt all)": RuntimeConfig(),
        "cpu memory arena on": RuntimeConfig(cpu_mem_arena=True),
        "graph optimisation basic": RuntimeConfig(graph_optimization="basic"),
        "graph optimisation off": RuntimeConfig(graph_optimization="disable"),
        "intra-op 2 threads + spinning": RuntimeConfig(intra_op_threads=2, allow_spinning=True),
    }
    out = []
    for name, cfg in variants.items():
        sess = ort.InferenceSession(
            onnx_bytes, sess_options=session_options(cfg), providers=["CPUExecutionProvider"]
        )
        for i in range(200):
            sess.run(["returns"], {"features": xs[i : i + 1]})
        ts = []
        for i in range(len(xs)):
            x = xs[i : i + 1]
            t0 = time.perf_counter_ns()
            sess.run(["returns"], {"features": x})
            ts.append(time.perf_counter_ns() - t0)
        out.append({"variant": f"{name}: session.run", **pct(ts)})
        if name.startswith("serving default"):
            io = sess.io_binding()
            xb, yb = np.zeros((1, xs.shape[1]), np.float32), np.zeros((1, len(manifest.horizons)), np.float32)
            io.bind_ortvalue_input("features", ort.OrtValue.ortvalue_from_numpy(xb))
            io.bind_ortvalue_output("returns", ort.OrtValue.ortvalue_from_numpy(yb))
            ts = []
            for i in range(len(xs)):
                x = xs[i : i + 1]
                t0 = time.perf_counter_ns()
                np.copyto(xb, x)
                sess.run_with_iobinding(io)
                ts.append(time.perf_counter_ns() - t0)
            out.append({"variant": f"{name}: IO binding, preallocated (the row runner)", **pct(ts)})
    return out


def bench_predictor(bundles: dict[str, Path], n: int, tmp: Path, rounds: int) -> dict:
    """Runs `predictor_child` in a fresh process that imports only what the server imports (the training
    stack and its heap in this process would weigh on the garbage collector and the caches)."""
    from tests.fixtures.bundles import feature_spec

    warm = feature_spec(
        json.loads((bundles["champion"] / "manifest.json").read_text())["feature_set"]["name"]
    ).warmup
    (tmp / "records.json").write_text(json.dumps(stream_records(warm + n)))
    out = subprocess.run(
        [sys.executable, __file__, "--predictor-child", str(tmp), str(rounds)],
        capture_output=True, text=True, cwd=CODE, env={**os.environ, "PYTHONPATH": str(CODE)},
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"predictor benchmark failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def predictor_child(tmp: Path, rounds: int) -> dict:
    import serving.predlog as predlog
    import serving.runtime as runtime
    from pipelines.features import core27
    from serving.config import RoutingConfig, RuntimeConfig
    from serving.metrics import ServingMetrics
    from serving.predictor import FeatureState, Predictor
    from serving.predlog import PredictionLog
    from serving.runtime import load_model

    bundles = {a: tmp / "bundles" / a for a in ("champion", "challenger")}
    recs = json.loads((tmp / "records.json").read_text())
    champion = load_model(bundles["champion"], RuntimeConfig())
    fs = champion.manifest.feature_set
    warm = fs.warmup
    has_switches = hasattr(core27, "ONE_CANDLE") and hasattr(runtime, "ROW_BINDING")

    def timed(pred: Predictor, keep: bool = False) -> tuple[dict, list]:
        """Per-candle latency (into a preallocated array, and keeping no result: the timed loop makes no
        garbage of its own, which would bring the collector into the tail), or with `keep` the values
        (untimed: the parity pass)."""
        for r in recs[:warm]:
            pred.update(r)
        ts = np.empty(len(recs) - warm, dtype=np.int64)
        values: list = []
        clock, update = time.perf_counter_ns, pred.update
        for i, r in enumerate(recs[warm:]):
            if keep:
                values.append(update(r).values)
                continue
            t0 = clock()
            update(r)
            ts[i] = clock() - t0
        return ({} if keep else pct(ts)), values

    def variant(one_candle: bool, row_binding: bool, keep: bool = False) -> tuple[dict, list]:
        if has_switches:
            core27.ONE_CANDLE, runtime.ROW_BINDING = one_candle, row_binding
        try:
            return timed(Predictor(load_model(bundles["champion"], RuntimeConfig())), keep)
        finally:
            if has_switches:
                core27.ONE_CANDLE, runtime.ROW_BINDING = True, True

    if has_switches:
        steps = [
            ("general feature kernel + session.run (both shortcuts off)", False, False),
            ("+ core27 one-candle kernel (Python floats, same bits)", True, False),
            ("+ IO-binding row runner = as served", True, True),
        ]
    else:  # an older tree: as it is
        steps = [("as served (this tree has no switches)", True, True)]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in steps}
    for _ in range(rounds):  # interleaved, so that each step sees the same spread of load
        for name, one, rb in steps:
            runs[name].append(variant(one, rb)[0])
    values = {name: variant(one, rb, keep=True)[1] for name, one, rb in (steps[0], steps[-1])}
    out: dict[str, Any] = {"rounds": rounds, "steps": []}
    for name, rs in runs.items():
        med = {k: round(float(np.median([r[k] for r in rs])), 1) for k in ("p50_us", "p99_us", "mean_us")}
        out["steps"].append({"step": name, **med, "n": rs[0]["n"], "load_avg_1m": load(), "rounds": rs})
    first, last = values[steps[0][0]], values[steps[-1][0]]
    diff = np.abs(np.asarray(first, dtype=np.float64) - np.asarray(last, dtype=np.float64))
    out["parity_shortcuts_vs_general"] = {
        "predictions": len(first),
        "max_abs_diff": float(diff.max()),
        "bundle_tolerance": champion.manifest.extra.get("parity_tolerance"),
        "identical": bool((diff == 0).all()),
    }
    out["update"] = {k: v for k, v in out["steps"][-1].items() if k != "rounds"}
    out["update"]["load_avg_1m"] = float(np.median([r["load_avg_1m"] for r in runs[steps[-1][0]]]))
    # the split: features alone (every candle), the model alone on the same rows, the rest = bookkeeping
    st = FeatureState(fs.name, len(fs.names), 1, 60_000)
    for r in recs[:warm]:
        st.update(r)
    fts, rows = [], []
    advance = getattr(st, "advance", st.update)
    for r in recs[warm:]:
        t0 = time.perf_counter_ns()
        advance(r)
        fts.append(time.perf_counter_ns() - t0)
        rows.append(st.model_input(2).copy())
    out["features_only"] = pct(fts)
    run = getattr(champion, "run_row", champion.run)
    mts = []
    for x in rows:
        t0 = time.perf_counter_ns()
        run(x)
        mts.append(time.perf_counter_ns() - t0)
    out["model_only"] = pct(mts)
    u, f, m = out["update"], out["features_only"], out["model_only"]
    out["bookkeeping_p50_us"] = round(u["p50_us"] - f["p50_us"] - m["p50_us"], 1)
    # as the HTTP server runs it: shadow (both arms score), prediction log, metrics
    metrics = ServingMetrics()
    log = PredictionLog(tmp / "predlog").start()
    try:
        pred = Predictor(
            champion,
            load_model(bundles["challenger"], RuntimeConfig()),
            RoutingConfig(mode="shadow"),
            log,
            observer=metrics.observe,
        )
        out["update_shadow_logged"], _ = timed(pred)
    finally:
        log.close()
    out["prediction_log_yield_every"] = predlog.YIELD_EVERY
    return out


# ---- the registry ------------------------------------------------------------------------------
def start_mlflow(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = home / "mlflow-server.log"
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/mlflow"), "server", "--backend-store-uri", f"sqlite:///{home}/mlflow.db"]
        + ["--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1"],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc, 180, log)
    return proc, url


def as_symbol(res: Any, symbol: str, universe: list[str] | None = None) -> Any:
    """The TrainResult `res` registered as `returns-<symbol>-1m`; with `universe`, a model pooled over
    those symbols (manifest `extra.universe`, symbol = the universe's name), as the whale task makes."""
    extra = dict(res.manifest.extra)
    if universe is not None:
        extra["universe"] = {"name": symbol, "symbols": universe}
    m = dataclasses.replace(res.manifest, symbol=symbol, model_name=f"returns-{symbol}-1m", extra=extra)
    return dataclasses.replace(res, symbol=symbol, manifest=m)


def register(
    url: str, models: dict[str, Any], symbols: list[str], universes: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """Each symbol's model (`returns-<SYMBOL>-1m`: the FILUSDT champion and challenger, renamed for the
    others) and each universe model registered by `log_training`, aliases set by `set_alias`."""
    from registry.client import make_client
    from registry.promotion import set_alias
    from registry.runs import log_training

    client = make_client(url, Path("unused"))
    t0 = time.perf_counter()
    todo = [(s, None) for s in symbols] + list((universes or {}).items())
    for s, members in todo:
        versions = {}
        for arm in ("challenger", "champion"):
            res = models[arm] if s == SYMBOL else as_symbol(models[arm], s, members)
            versions[arm] = log_training(client, res).version
        for arm, v in versions.items():
            set_alias(client, f"returns-{s}-1m", arm, v, reason="bench_serving", actor="bench_serving")
    return {"models": len(todo), "versions_each": 2, "register_s": round(time.perf_counter() - t0, 1)}


def log_mlflow_peer(url: str, onnx_bytes: bytes) -> str:
    """The champion's graph as an MLflow ONNX model (pyfunc flavour) for `mlflow models serve`, with the
    session settings Kairos uses (CPU, one thread, sequential, no spinning): the servers are compared."""
    import mlflow
    import mlflow.onnx
    import onnx

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("bench-serving-peer")
    options = {
        "intra_op_num_threads": 1,
        "inter_op_num_threads": 1,
        "execution_mode": "sequential",
        "extra_session_config": {"session.intra_op.allow_spinning": "0"},
    }
    with mlflow.start_run(run_name="mlflow-models-serve-peer"):
        info = mlflow.onnx.log_model(
            onnx.load_from_string(onnx_bytes),
            name="model",
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            onnx_session_options=options,
        )
    return info.model_uri


# ---- processes, memory ---------------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def rss(pid: int) -> dict:
    """VmRSS/VmHWM, anonymous vs file-backed pages, threads, the command, heavy libraries mapped."""
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(next(line.split()[1] for line in status.splitlines() if line.startswith(k)))  # noqa: E731
    maps = Path(f"/proc/{pid}/maps").read_text()
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    return {
        "pid": pid,
        "cmd": cmd.replace(str(REPO) + "/", ""),
        "rss_mb": round(get("VmRSS:") / 1024, 1),
        "hwm_mb": round(get("VmHWM:") / 1024, 1),
        "rss_anon_mb": round(get("RssAnon:") / 1024, 1),
        "rss_file_mb": round(get("RssFile:") / 1024, 1),
        "threads": get("Threads:"),
        "heavy_libraries_mapped": [h for h in HEAVY if f"/site-packages/{h}/" in maps],
    }


def tree_rss(pid: int) -> dict:
    procs = [rss(p) for p in tree(pid)]
    top = max(procs, key=lambda p: p["rss_mb"])
    return {"largest_rss_mb": top["rss_mb"], "largest": top, "processes": procs, "load_avg_1m": load()}


def smaps(pid: int, top: int = 12) -> list[dict]:
    """Resident MB per mapping (shared libraries by package, [heap], anonymous)."""
    acc: dict[str, int] = {}
    cur = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            cur = parts[5] if len(parts) > 5 else "[anonymous]"
            cur = re.sub(r"^(.*/site-packages/[^/]+)/.*", r"\1", cur).split("/site-packages/")[-1]
        elif line.startswith("Rss:"):
            acc[cur] = acc.get(cur, 0) + int(line.split()[1])
    return [
        {"mapping": k, "rss_mb": round(v / 1024, 1)}
        for k, v in sorted(acc.items(), key=lambda kv: -kv[1])[:top]
    ]


IMPORTS = r"""
import importlib, json, sys
def rss():
    return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS'))) / 1024
rows, prev = [], rss()
rows.append(("python", round(prev, 1), 0.0))
for m in sys.argv[1:]:
    importlib.import_module(m)
    r = rss(); rows.append((m, round(r, 1), round(r - prev, 1))); prev = r
print(json.dumps(rows))
"""
# what `python -m serving.server --model` imports, in order (each line: the package and what it pulls in)
SERVING_IMPORTS = [
    "numpy", "onnxruntime", "pydantic", "typer", "yaml", "pipelines.contracts.settings", "serving.config",
    "pipelines.features", "serving.runtime", "serving.predictor", "prometheus_client", "serving.state",
    "fastapi", "serving.app", "uvicorn", "uvloop", "httptools", "serving.server", "serving.watcher",
]  # fmt: skip


def import_table() -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS, *SERVING_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
        cwd=CODE,
    )
    return [{"import": m, "rss_mb": r, "added_mb": d} for m, r, d in json.loads(out.stdout)]


def serving_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "KAIROS_HOME": str(home), "PYTHONPATH": str(CODE)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def start_kairos(
    argv: list[str], home: Path, tmp: Path, mode: str = "shadow", name: str = "kairos"
) -> tuple[subprocess.Popen, str, float]:
    """`argv` (e.g. the `kairos` script + serve ...) with a config of `mode` routing and a free port."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = home / "serving.yaml"
    cfg.write_text(f"routing:\n  mode: {mode}\nwatcher:\n  poll_interval_s: 30\n")
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--config", str(cfg), "--log-level", "warning"],
        cwd=CODE,
        env=serving_env(home),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    ready_s = wait_http(f"{base}/readyz", proc, 300, log)
    return proc, base, ready_s


def kairos_cli() -> list[str]:
    script = REPO / ".venv" / "bin" / "kairos"
    if CODE == REPO and script.exists():
        return [str(script)]
    return [sys.executable, "-m", "flows.cli"]


# ---- load generation ------------------------------------------------------------------------------
LUA_STREAM = r"""
-- wrk thread i streams one symbol (symbols[i]) over its one connection (-t N -c N): a symbol's candles
-- arrive in order. Bodies are built in init(). The index moves on responses only (wrk may build a
-- request it never sends), so no candle is skipped; past the end the last body repeats (refused: 409).
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function init(args)
  local symbols = {}
  for s in string.gmatch(args[2], "[^,]+") do table.insert(symbols, s) end
  local sym = symbols[(id % #symbols) + 1]
  local prefix, suffix = args[3] or "", args[4] or ""
  bodies = {}
  for line in io.lines(args[1]) do
    local body = (prefix .. line .. suffix):gsub("@SYMBOL@", sym)
    table.insert(bodies, body)
  end
  i, bad = 1, 0
  headers = {["Content-Type"] = "application/json"}
  path = args[5] or "/v1/candles"
end
function request() return wrk.format("POST", path, headers, bodies[math.min(i, #bodies)]) end
function response(status, hdrs, body)
  if status ~= 200 then bad = bad + 1 end
  i = i + 1
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + (t:get("bad") or 0) end
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n', summary.requests, summary.duration, b,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""

PY_CLIENT = r"""
import json, socket, sys, threading, time
host, port, path, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
streams = json.load(open(sys.argv[5]))  # one list of bodies per connection
lat, bad = [], [0]
def run(bodies):
    s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb"); end = time.perf_counter() + seconds
    for b in bodies:
        if time.perf_counter() > end: break
        b = b.encode(); t0 = time.perf_counter_ns()
        head = b"POST %s HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n" % path.encode()
        s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(b) + b)
        status = int(f.readline().split()[1]); size = 0
        while (line := f.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"): size = int(line.split(b":")[1])
        f.read(size); lat.append(time.perf_counter_ns() - t0); bad[0] += status != 200
ts = [threading.Thread(target=run, args=(b,)) for b in streams]
t0 = time.perf_counter(); [t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"lat": lat, "wall": time.perf_counter() - t0, "bad": bad[0]}))
"""


def load_test(
    base: str, feed: Path, symbols: list[str], conns: int, seconds: float, tmp: Path,
    prefix: str = "", suffix: str = "", path: str = "/v1/candles",
) -> dict:  # fmt: skip
    """`conns` connections for `seconds`, connection i posting `prefix + line + suffix` (`@SYMBOL@` = its
    symbol) for the lines of `feed` in order. wrk when installed, else the Python socket client."""
    if shutil.which("wrk"):
        lua = tmp / "stream.lua"
        lua.write_text(LUA_STREAM)
        cmd = ["wrk", f"-t{conns}", f"-c{conns}", f"-d{seconds:g}s", "--latency", "-s", str(lua), base]
        cmd += ["--", str(feed), ",".join(symbols), prefix, suffix, path]
        la = load()
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"wrk failed ({run.returncode}): {run.stderr[-2000:]} {run.stdout[-2000:]}")
        out = run.stdout
        res = json.loads(next(line[8:] for line in out.splitlines() if line.startswith("WRKJSON ")))
        rps = res["requests"] / (res["duration_us"] / 1e6)
        res = {
            "client": "wrk",
            **res,
            "req_per_s": round(rps, 1),
            "load_avg_1m": la,
            "load_avg_1m_after": load(),
        }
        return res
    lines = feed.read_text().splitlines()
    streams = [
        [(prefix + x + suffix).replace("@SYMBOL@", symbols[i % len(symbols)]) for x in lines]
        for i in range(conns)
    ]
    bodies = tmp / "py_client_bodies.json"
    bodies.write_text(json.dumps(streams))
    host, port = base.split("//")[1].split(":")
    la = load()
    out = subprocess.run(
        [sys.executable, "-c", PY_CLIENT, host, port, path, str(seconds), str(bodies)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout)
    stats = pct(r["lat"])
    return {
        "client": "python socket client (wrk not installed; GIL-bound, slower than wrk)",
        "requests": len(r["lat"]), "non_2xx": r["bad"], **{k: stats[k] for k in ("p50_us", "p99_us", "mean_us")},
        "req_per_s": round(len(r["lat"]) / r["wall"], 1), "load_avg_1m": la, "load_avg_1m_after": load(),
    }  # fmt: skip


def rounds_of(run: Any, rounds: int, warm: Any = None) -> dict:
    """`run()` (a load test) `rounds` times (`warm()` before each: fresh streams); the median of each
    figure over the rounds, and every round with its load average (a shared box: one round can land on
    another job's burst)."""
    rs = []
    for _ in range(rounds):
        if warm is not None:
            warm()
        rs.append(run())
    med = {k: float(np.median([r[k] for r in rs])) for k in ("p50_us", "p99_us", "req_per_s", "load_avg_1m")}
    out = {**rs[0], **med, "aggregate": f"median of {rounds} rounds", "rounds": rs}
    out["requests"] = sum(r["requests"] for r in rs)
    out["non_2xx"] = sum(r["non_2xx"] for r in rs)
    return out


def warm_streams(base: str, symbols: list[str], warm: list[dict]) -> None:
    import httpx

    with httpx.Client(base_url=base, timeout=60) as c:
        for s in symbols:
            c.delete(f"/v1/streams/{s}")
            r = c.post("/v1/candles", json={"symbol": s, "candles": warm})
            assert r.status_code == 200 and r.json()["warmup_remaining"] == 0, r.text


def feeds(tmp: Path, warmup: int, feature_set: str) -> dict[str, Any]:
    """Candle bodies (one JSON candle a line) after a warm-up window, and the same candles' feature rows
    (the MLflow peer's input: {"inputs": [[...]]}, one a line)."""
    from pipelines.features import StreamingFeatures
    from tests.fixtures.bundles import api_candle

    recs = stream_records(43_000)
    sf = StreamingFeatures(feature_set, 60_000)
    rows = [sf.update(r) for r in recs]
    candles = tmp / "candles.jsonl"
    candles.write_text("\n".join(json.dumps(api_candle(r), separators=(",", ":")) for r in recs[warmup:]))
    features = tmp / "features.jsonl"
    features.write_text(
        "\n".join(json.dumps({"inputs": [np.asarray(x, np.float32).tolist()]}) for x in rows[warmup:])
    )
    return {"warm": [api_candle(r) for r in recs[:warmup]], "candles": candles, "features": features}


# ---- 2.-4. processes: memory, HTTP, MLflow peer ---------------------------------------------------
def bench_processes(
    models: dict[str, Any], bundles: dict[str, Path], tmp: Path, seconds: float, n16: int, rounds: int
) -> dict:
    import httpx

    out: dict[str, Any] = {}
    fs = models["champion"].manifest.feature_set
    feed = feeds(tmp, fs.warmup, fs.name)
    home = tmp / "mlflow"
    home.mkdir()
    mlflow_proc, url = start_mlflow(home)
    procs: list[subprocess.Popen] = [mlflow_proc]
    try:
        symbols16 = [f"SYM{i:02d}" for i in range(n16)]
        out["registry"] = {
            "tracking": "mlflow server (SQLite, local artifacts)",
            **register(url, models, [SYMBOL, *symbols16], {UNIVERSE: symbols16}),
        }
        peer_uri = log_mlflow_peer(url, models["champion"].onnx_bytes)

        # -- memory: `kairos serve --model` as a user starts it, champion + challenger from the registry
        cli = kairos_cli()
        serve_args = ["serve", "--model", NAME, "--tracking-uri", url]
        proc, base, ready_s = start_kairos(cli + serve_args, tmp / "home-kairos", tmp, name="kairos-serve")
        procs.append(proc)
        mem: dict[str, Any] = {"command": " ".join(["kairos", *serve_args[:3]]) + " --tracking-uri URL"}
        mem["ready_s"] = round(ready_s, 1)
        mem["arms_loaded"] = list(httpx.get(f"{base}/v1/models", timeout=10).json()["models"][0]["loaded"])
        time.sleep(1.0)
        mem["after_readyz"] = tree_rss(proc.pid)
        mem["mappings_after_readyz"] = smaps(proc.pid)
        # -- HTTP, 1 connection, shadow: the same process
        out["http_1conn_kairos"] = rounds_of(
            lambda: load_test(base, feed["candles"], [SYMBOL], 1, seconds, tmp, '{"symbol":"@SYMBOL@","candles":[', "]}"),
            rounds, lambda: warm_streams(base, [SYMBOL], feed["warm"]),
        )  # fmt: skip
        mem["after_http"] = tree_rss(proc.pid)
        stop(proc)
        procs.remove(proc)
        # -- the same server started otherwise, one change at a time (largest RSS after /readyz)
        noexec = [sys.executable, "-c", "import sys; import flows.cli.main; from serving.server import serve; "
                  "import typer; sys.argv = ['kairos serve', *sys.argv[1:]]; typer.run(serve)"]  # fmt: skip
        variants = [
            ("the CLI's imports still resident (kairos serve before it exec'd the server)", noexec, {}),
            (
                "python -m serving.server (no -OO: docstrings kept)",
                [sys.executable, "-m", "serving.server"],
                {},
            ),
            ("kairos serve with MALLOC_ARENA_MAX=2", cli + ["serve"], {"MALLOC_ARENA_MAX": "2"}),
        ]
        mem["variants"] = []
        for i, (what, argv, extra_env) in enumerate(variants):
            saved = {k: os.environ.get(k) for k in extra_env}
            os.environ.update(extra_env)
            try:
                proc, base, _ = start_kairos(
                    argv + serve_args[1:], tmp / f"home-v{i}", tmp, name=f"variant{i}"
                )
            finally:
                for k, v in saved.items():
                    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
            procs.append(proc)
            time.sleep(1.0)
            r = tree_rss(proc.pid)
            mem["variants"].append(
                {"variant": what, "largest_rss_mb": r["largest_rss_mb"], "load_avg_1m": r["load_avg_1m"]}
            )
            stop(proc)
            procs.remove(proc)
        mem["imports"] = import_table()
        out["memory"] = mem

        # -- the MLflow peer: `mlflow models serve`, same graph, one worker, feature rows in
        port = free_port()
        log = tmp / "mlflow-models-serve.log"
        path = f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"  # it runs `uvicorn`
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PATH": path}
        peer = subprocess.Popen(
            [str(REPO / ".venv/bin/mlflow"), "models", "serve", "-m", peer_uri, "--env-manager", "local",
             "-p", str(port), "-w", "1"],
            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(peer)
        peer_base = f"http://127.0.0.1:{port}"
        wait_http(f"{peer_base}/ping", peer, 300, log)
        probe = httpx.post(f"{peer_base}/invocations", content=feed["features"].read_text().splitlines()[0],
                           headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
        out["mlflow_peer"] = {
            "command": f"mlflow models serve -m {peer_uri} --env-manager local -w 1",
            "model": "the champion's ONNX graph, mlflow.onnx.log_model (pyfunc flavour), CPU, 1 thread, sequential",
            "input": '{"inputs": [[18 feature values]]} per request (the peer computes no features)',
            "probe_status": probe.status_code,
            "probe_answer": probe.text[:200],
            "rss_after_ready": tree_rss(peer.pid),
        }
        out["http_1conn_mlflow"] = rounds_of(
            lambda: load_test(peer_base, feed["features"], ["-"], 1, seconds, tmp, path="/invocations"),
            rounds,
        )
        out["http_16conn_mlflow"] = rounds_of(
            lambda: load_test(peer_base, feed["features"], ["-"], 16, seconds, tmp, path="/invocations"),
            rounds,
        )
        stop(peer)
        procs.remove(peer)

        # -- HTTP, 16 connections: 16 models (one symbol each), each champion + challenger, shadow
        args16 = ["serve", "--tracking-uri", url] + [
            a for s in symbols16 for a in ("--model", f"returns-{s}-1m")
        ]
        proc, base, _ = start_kairos(cli + args16, tmp / "home-16", tmp, name="kairos-16")
        procs.append(proc)
        out["http_16conn_kairos"] = rounds_of(
            lambda: load_test(base, feed["candles"], symbols16, 16, seconds, tmp, '{"symbol":"@SYMBOL@","candles":[', "]}"),
            rounds, lambda: warm_streams(base, symbols16, feed["warm"]),
        )  # fmt: skip
        out["http_16conn_kairos"]["rss_largest_mb"] = tree_rss(proc.pid)["largest_rss_mb"]
        # -- the batch endpoint: every request carries one candle of each of the 16 symbols
        warm_streams(base, symbols16, feed["warm"])
        item = '{"symbol":"SYMBOL","candles":[@C@]}'
        batch_feed = tmp / "batch.jsonl"
        batch_feed.write_text("\n".join(
            "[" + ",".join(item.replace("SYMBOL", s).replace("@C@", line) for s in symbols16) + "]"
            for line in feed["candles"].read_text().splitlines()[:20_000]
        ))  # fmt: skip
        has_batch = httpx.post(f"{base}/v1/candles/batch", json=[], timeout=10).status_code != 404
        if has_batch:
            r = load_test(base, batch_feed, ["-"], 1, seconds, tmp, path="/v1/candles/batch")
            r["candles_per_request"] = len(symbols16)
            r["candles_per_s"] = round(r["req_per_s"] * len(symbols16), 1)
            out["http_batch_16_models_kairos"] = r
        stop(proc)
        procs.remove(proc)
        # -- one universe model over the 16 symbols (champion + challenger, shadow): 16 connections
        # one candle each, then the batch endpoint (automatic batching: one model run per arm a request)
        proc, base, _ = start_kairos(cli + ["serve", "--tracking-uri", url, "--model", f"returns-{UNIVERSE}-1m"],
                                     tmp / "home-u", tmp, name="kairos-universe")  # fmt: skip
        procs.append(proc)
        warm_streams(base, symbols16, feed["warm"])
        out["http_16conn_universe_kairos"] = load_test(base, feed["candles"], symbols16, 16, seconds, tmp,
                                                       '{"symbol":"@SYMBOL@","candles":[', "]}")  # fmt: skip
        if has_batch:
            warm_streams(base, symbols16, feed["warm"])
            r = load_test(base, batch_feed, ["-"], 1, seconds, tmp, path="/v1/candles/batch")
            r["candles_per_request"] = len(symbols16)
            r["candles_per_s"] = round(r["req_per_s"] * len(symbols16), 1)
            out["http_batch_16_symbols_universe_kairos"] = r
        stop(proc)
        procs.remove(proc)
    finally:
        for p in procs:
            stop(p)
    k1, m1 = out["http_1conn_kairos"], out["http_1conn_mlflow"]
    k16, m16 = out["http_16conn_kairos"], out["http_16conn_mlflow"]
    out["kairos_vs_mlflow"] = {
        "p50_ratio_1conn (mlflow / kairos)": round(m1["p50_us"] / k1["p50_us"], 2),
        "p99_ratio_1conn (mlflow / kairos)": round(m1["p99_us"] / k1["p99_us"], 2),
        "throughput_ratio_16conn (kairos / mlflow)": round(k16["req_per_s"] / m16["req_per_s"], 2),
        "note": "Kairos streams the candle (features + 2 models in shadow, prediction log, metrics); the "
        "peer runs the same graph on a feature row the client computed",
    }
    return out


# ---- main -----------------------------------------------------------------------------------------
def goals(res: dict) -> dict:
    p = res["predictor"]["update"]
    g: dict[str, Any] = {
        "1 Predictor.update p99 <= 50 us (champion, features + model, log off)": {
            "figure": f"p50 {p['p50_us']} us, p99 {p['p99_us']} us (median of {res['predictor']['rounds']} rounds; "
            f"rounds' p99 {[r['p99_us'] for r in res['predictor']['steps'][-1]['rounds']]})",
            "met": p["p99_us"] <= 50,
            "load_avg_1m": p["load_avg_1m"],
        }
    }
    proc = res.get("processes")
    if proc:
        m = proc["memory"]["after_readyz"]
        g["2 RSS <= 100 MB, kairos serve --model, champion + challenger, after /readyz"] = {
            "figure": f"{m['largest_rss_mb']} MB (after the HTTP runs: {proc['memory']['after_http']['largest_rss_mb']} MB)",
            "met": m["largest_rss_mb"] <= 100,
            "load_avg_1m": m["load_avg_1m"],
        }
        h = proc["http_1conn_kairos"]
        g["3a POST /v1/candles 1 connection, shadow: p50 <= 0.5 ms, p99 <= 2 ms"] = {
            "figure": f"p50 {h['p50_us'] / 1e3:.2f} ms, p99 {h['p99_us'] / 1e3:.2f} ms ({h['req_per_s']} req/s, "
            f"{h['client']}; {h.get('aggregate', '1 round')}, rounds' p99 "
            f"{[round(r['p99_us'] / 1e3, 2) for r in h.get('rounds', [h])]} ms)",
            "met": h["p50_us"] <= 500 and h["p99_us"] <= 2000,
            "load_avg_1m": h["load_avg_1m"],
        }
        h = proc["http_16conn_kairos"]
        g["3b POST /v1/candles 16 connections, shadow: >= 2,000 req/s"] = {
            "figure": f"{h['req_per_s']} req/s (p50 {h['p50_us'] / 1e3:.2f} ms, p99 {h['p99_us'] / 1e3:.2f} ms; "
            f"{h.get('aggregate', '1 round')}, rounds {[r['req_per_s'] for r in h.get('rounds', [h])]} req/s)",
            "met": h["req_per_s"] >= 2000,
            "load_avg_1m": h["load_avg_1m"],
        }
        b, u = proc.get("http_batch_16_symbols_universe_kairos"), proc["http_16conn_universe_kairos"]
        if b:
            g[
                "4 POST /v1/candles/batch, one universe model over 16 symbols (vs 16 connections, one candle each)"
            ] = {
                "figure": f"{b['candles_per_s']} candles/s ({b['req_per_s']} req/s, p50 {b['p50_us'] / 1e3:.2f} ms) "
                f"vs {u['req_per_s']} candles/s",
                "load_avg_1m": b["load_avg_1m"],
            }
    return g


def main() -> None:
    global CODE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--in-process-only", action="store_true", help="skip the servers (memory, HTTP)")
    ap.add_argument(
        "--code-root", type=Path, default=None, help="serving code to measure (default: this tree)"
    )
    ap.add_argument("--before", type=Path, default=None, help="an earlier serving.json: its goal figures")
    ap.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    ap.add_argument("--predictor-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.predictor_child:  # the in-process measurements, in a process of their own
        print(json.dumps(predictor_child(Path(args.predictor_child[0]), int(args.predictor_child[1]))))
        return
    if args.code_root is not None:
        CODE = args.code_root.resolve()
    # no MLflow telemetry (no network here; its thread also races os.environ readers in this process)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.path.insert(0, str(CODE))
    n, seconds, n16 = (2000, 3.0, 16) if args.quick else (10_000, 10.0, 16)
    tmp = RESULTS / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    res: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "load_generator": "wrk "
            + subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
            if shutil.which("wrk")
            else "python socket client (wrk not installed)",
            "code": str(CODE),
        }
    }
    models = train_default(args.quick)
    res["model"] = models["info"]
    bundles = write_bundles(models, tmp / "bundles")
    res["session"] = bench_session(bundles["champion"], 3000 if args.quick else 10_000)
    res["predictor"] = bench_predictor(bundles, n, tmp, 1 if args.quick else 5)
    if not args.in_process_only:
        res["processes"] = bench_processes(models, bundles, tmp, seconds, n16, 1 if args.quick else 3)
    res["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["goals"] = goals(res)
    if args.before is not None:
        before = json.loads(args.before.read_text())
        res["before"] = {
            "source": f"this script run with --code-root {before['machine'].get('code')} (the tree before)",
            "load_avg_at_start": before["machine"].get("load_avg_at_start"),
            **before.get("goals", {}),
        }
    shutil.rmtree(tmp, ignore_errors=True)
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")

    print(
        f"\nserving benchmark ({res['machine']['cpus']} CPUs, load average at start {res['machine']['load_avg_at_start']})"
    )
    print(f"model: {res['model']['feature_set']}, {res['model']['lightgbm']}, {res['model']['onnx_kib']} KiB")
    for s in res["predictor"]["steps"]:
        print(
            f"  Predictor.update, {s['step']:<58} p50 {s['p50_us']:>6} us  p99 {s['p99_us']:>6} us  (load {s['load_avg_1m']})"
        )
    p = res["predictor"]
    print(f"  split (p50): features {p['features_only']['p50_us']} us, model {p['model_only']['p50_us']} us, "
          f"bookkeeping {p['bookkeeping_p50_us']} us; parity {p['parity_shortcuts_vs_general']}")  # fmt: skip
    for name, g in res["goals"].items():
        print(
            f"{'MET ' if g.get('met') else 'MISS' if 'met' in g else '    '} {name}: {g['figure']} (load {g['load_avg_1m']})"
        )
    if "processes" in res:
        print(f"kairos vs mlflow models serve: {res['processes']['kairos_vs_mlflow']}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
