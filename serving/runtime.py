"""Model runtime: a bundle (`model.onnx` + `manifest.json`) → one warmed onnxruntime session.

`load_model(bundle_dir, cfg, version=...)` reads the bundle with `pipelines.contracts.bundle.read_bundle`,
builds one session with latency-oriented options (see `RuntimeConfig`), checks the graph against the
manifest and warms it up; any failure raises `ModelLoadError` so a caller (the watcher) can keep the
old model serving. `LoadedModel.run(x)`: features float32 (N, F) or (N, T, F) → (returns (N, H) float32,
confidence (N, H) float32 or None); `run_all(x)` adds the bundle's other outputs. The streaming hot path is
`run_row(x)` (one row, outputs as Python floats) through a `RowRunner`: the session's input and outputs
bound once to preallocated buffers (IO binding), checked against `session.run` at load.

Outputs, by name (no per-task code): the manifest's first output is the task's (N, H); an output named
`confidence` is its per-horizon confidence; an output named `feature_deviation` of width F is a
per-feature deviation (its largest entries become `Prediction.top_features`); every other output of
width 1 (whale: `anomaly_score`, `threat_level`) is a named scalar (`Prediction.extras`). A bundle
whose manifest has `extra.universe = {"name", "symbols"}` is a model pooled over those symbols
(`LoadedModel.universe`); its manifest `symbol` is the universe's name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pipelines.contracts.bundle import BundleError, Manifest, read_bundle, sha256_bytes
from pipelines.contracts.errors import KairosError
from pipelines.contracts.onnx import make_session
from serving.config import RuntimeConfig

log = logging.getLogger("kairos.serving")

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelLoadError(KairosError):
    """A bundle could not be loaded or failed its warm-up; the model that was serving keeps serving."""


CONFIDENCE = "confidence"  # optional output: per-horizon confidence of the task's output (N, H)
DEVIATION = "feature_deviation"  # optional output: per-feature deviation (N, F) → top_features
TOP_FEATURES = 3  # how many of the largest deviations a prediction carries
# Give each loaded model a `RowRunner` (one row through a preallocated IO binding) for
# `LoadedModel.run_row`; False = `session.run` only (the benchmark's "before").
ROW_BINDING = True


def parse_universe(manifest: Manifest) -> tuple[str, tuple[str, ...]] | None:
    """`extra.universe` of a manifest → (name, symbols), None when absent; ModelLoadError when malformed."""
    u = manifest.extra.get("universe")
    if u is None:
        return None
    where = f"{manifest.model_name}: manifest extra.universe"
    if not isinstance(u, dict) or not isinstance(u.get("name"), str) or not u["name"]:
        raise ModelLoadError(f"{where} must be {{'name': str, 'symbols': [str, ...]}}, got {u!r:.200}")
    symbols = u.get("symbols")
    if not isinstance(symbols, list) or not symbols or not all(isinstance(x, str) and x for x in symbols):
        raise ModelLoadError(
            f"{where}.symbols must be a non-empty list of symbol names, got {symbols!r:.200}"
        )
    if u["name"] != manifest.symbol:
        raise ModelLoadError(
            f"{where}.name {u['name']!r} differs from the manifest symbol {manifest.symbol!r} "
            "(a universe model's symbol is its universe's name)"
        )
    return u["name"], tuple(dict.fromkeys(symbols))  # order kept, duplicates out


_REPORTED_MISSING: set[str] = set()  # providers already reported missing in this process


def choose_providers(wanted: tuple[str, ...], available: list[str] | None = None) -> list[str]:
    """Keep the configured providers that this onnxruntime build has, in the configured order.

    Logs one line per missing provider, once per process (CI and most laptops have no TensorRT/CUDA),
    and always ends with CPUExecutionProvider.
    """
    available = ort.get_available_providers() if available is None else available
    chosen = []
    missing = [p for p in wanted if p not in available]
    for p in wanted:
        if p in available:
            chosen.append(p)
    new = [p for p in missing if p not in _REPORTED_MISSING]
    if new:
        _REPORTED_MISSING.update(new)
        log.warning(
            "onnxruntime providers %s are not available here; using %s",
            ", ".join(new),
            " → ".join(chosen + (["CPUExecutionProvider"] if "CPUExecutionProvider" not in chosen else [])),
        )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def provider_options(cfg: RuntimeConfig, providers: list[str]) -> list[Any]:
    """The chosen providers with their options, as onnxruntime takes them: TensorRT with FP16 and an engine
    + timing cache in `cfg.tensorrt_cache_dir` (created here), CUDA and CPU as plain names."""
    out: list[Any] = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            cache = Path(cfg.tensorrt_cache_dir).expanduser()
            cache.mkdir(parents=True, exist_ok=True)
            opts = {
                "trt_fp16_enable": cfg.tensorrt_fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
            }
            out.append((p, opts))
        else:
            out.append(p)
    return out


def session_options(cfg: RuntimeConfig, cache_path: Path | None = None) -> ort.SessionOptions:
    """SessionOptions from config; `cache_path` (when caching is on) receives the optimised graph."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.intra_op_threads
    so.inter_op_num_threads = cfg.inter_op_threads
    so.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL
        if cfg.execution_mode == "sequential"
        else ort.ExecutionMode.ORT_PARALLEL
    )
    so.graph_optimization_level = _OPT_LEVELS[cfg.graph_optimization]
    spin = "1" if cfg.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3  # errors only: warnings about unused initialisers are noise here
    # single-row tensors are a few hundred bytes: the arena only pre-reserves memory (~1 MB a session)
    so.enable_cpu_mem_arena = cfg.cpu_mem_arena
    if cfg.optimized_model_cache and cache_path is not None:
        so.optimized_model_filepath = str(cache_path)
    return so


@dataclass
class LoadedModel:
    """One model version, loaded and warmed; immutable after construction (swapped, never mutated)."""

    manifest: Manifest
    version: str
    session: ort.InferenceSession
    sha256: str
    source: str  # where it came from (bundle dir or registry URI), for /v1/models
    providers: list[str]
    loaded_at: float = field(default_factory=time.time)
    warmup_us: float = 0.0  # median latency of the warm-up runs, microseconds
    _input: str = ""
    _outputs: list[str] = field(default_factory=list)
    horizons_tuple: tuple[int, ...] = ()  # served horizons, built once (every Prediction carries them)
    signed: bool = True  # manifest.signed, built once
    output_name: str = "returns"  # manifest.outputs[0].name, built once
    state_key: str = ""  # feature set name (+ a digest of its fitted params), built once
    # horizons of the bundle not served: walk-forward did not beat the task's best naive rule there
    withheld: tuple[int, ...] = ()
    _keep: list[int] | None = None  # output columns served; None = all
    has_confidence: bool = False  # the bundle has a "confidence" output (fetched second)
    extra_names: tuple[str, ...] = ()  # width-1 outputs beyond the task's (fetched after confidence)
    has_deviation: bool = False  # a "feature_deviation" (N, F) output (fetched last)
    raises_alerts: bool = False  # a "threat_level" output: the champion's predictions can raise alerts
    universe: tuple[str, ...] | None = None  # the symbols a pooled (universe) model was trained on
    universe_name: str | None = None
    feature_names: tuple[str, ...] = ()
    rank: int = 2  # input rank: 2 = tabular (N, F), 3 = sequence (N, T, F); built once
    # the one-row path through a preallocated IO binding (`RowRunner`); None = `session.run` only
    row_runner: RowRunner | None = None

    def __post_init__(self) -> None:
        hs = list(self.manifest.horizons)
        drop = set(self.withheld) & set(hs)
        if drop == set(hs):
            raise ModelLoadError(
                f"{self.manifest.model_name} v{self.version} is below the task's best naive rule at every "
                f"horizon in walk-forward ({self.manifest.extra.get('below_baselines')}); nothing to serve "
                "(runtime.withhold_below_baselines: false serves it anyway)"
            )
        self.withheld = tuple(h for h in hs if h in drop)
        self._keep = [j for j, h in enumerate(hs) if h not in drop] if drop else None
        self.horizons_tuple = tuple(h for h in hs if h not in drop)
        self.signed = self.manifest.signed
        self.output_name = self.manifest.outputs[0].name
        self.feature_names = tuple(self.manifest.feature_set.names)
        self.rank = len(self.manifest.input.shape)
        u = parse_universe(self.manifest)
        if u is not None:
            self.universe_name, self.universe = u
        fs = self.manifest.feature_set
        self.state_key = fs.name  # models share streaming features when the set and its params are equal
        if fs.params:
            digest = hashlib.sha256(json.dumps(fs.params, sort_keys=True).encode()).hexdigest()[:16]
            self.state_key = f"{fs.name}#{digest}"

    @property
    def name(self) -> str:
        return self.manifest.model_name

    @property
    def horizons(self) -> list[int]:
        """The horizons served (the manifest's, less any withheld)."""
        return list(self.horizons_tuple)

    @property
    def n_features(self) -> int:
        return len(self.manifest.feature_set.names)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """x float32 (N, F) or (N, T, F) → (returns (N, H), confidence (N, H) or None)."""
        ret, conf, _ = self.run_all(x)
        return ret, conf

    def run_all(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """x → (task output (N, H), confidence (N, H) or None, [extra (N, 1) per `extra_names`...,
        feature_deviation (N, F) if `has_deviation`])."""
        outs = self.session.run(self._outputs, {self._input: x})
        ret = outs[0]
        conf = outs[1] if self.has_confidence else None
        if self._keep is not None:
            ret = ret[:, self._keep]
            conf = None if conf is None else conf[:, self._keep]
        return ret, conf, outs[2 if self.has_confidence else 1 :]

    def run_row(self, x: np.ndarray) -> tuple[list[float], list[float] | None, list[np.ndarray]]:
        """One row, x float32 (1, F) or (1, T, F) → (the task's output as floats (served horizons),
        confidence as floats or None, [extras (1, 1)..., feature_deviation (1, F)] as fresh arrays).

        The hot path of `Predictor.update`: through the preallocated IO binding (`RowRunner`) when
        it is free, else (another thread holds it, or the model has none) through `run_all`; both
        give onnxruntime's values (`tests/unit/test_serving_fastpath.py`)."""
        runner = self.row_runner
        if runner is not None and runner.lock.acquire(False):
            try:
                outs = runner.run(x)
                ret = outs[0][0].tolist()
                conf = outs[1][0].tolist() if self.has_confidence else None
                rest = [o.copy() for o in outs[2 if self.has_confidence else 1 :]]
            finally:
                runner.lock.release()
            keep = self._keep
            if keep is not None:
                ret = [ret[j] for j in keep]
                conf = None if conf is None else [conf[j] for j in keep]
            return ret, conf, rest
        r, c, rest = self.run_all(x)
        return r[0].tolist(), None if c is None else c[0].tolist(), rest

    def top_features(self, deviation: np.ndarray) -> tuple[tuple[str, float], ...]:
        """The `TOP_FEATURES` largest finite entries of one row of `feature_deviation`, largest first."""
        d = np.where(np.isfinite(deviation), deviation, -np.inf)
        k = min(TOP_FEATURES, d.size)
        idx = np.argpartition(-d, k - 1)[:k] if d.size > k else np.arange(d.size)
        idx = idx[np.argsort(-d[idx], kind="stable")]
        names = self.feature_names
        return tuple((names[i], float(d[i])) for i in idx.tolist() if d[i] != -np.inf)


class RowRunner:
    """One row through a session with its input and outputs bound once to preallocated buffers
    (`InferenceSession.io_binding`): a run copies the row in and reads the outputs in place, so it
    allocates no input/output tensors and skips `session.run`'s per-call feed and fetch handling
    (~1.5 µs of ~9 µs for the default returns model on the 2-core box; benchmarks/bench_serving.py).

    Not thread-safe by itself: callers hold `lock` around `run` and reading `outs`
    (`LoadedModel.run_row` takes it without blocking and falls back to `session.run` when busy).
    Built only for CPU sessions whose input and fetched outputs are float32 with fixed row widths.
    """

    __slots__ = ("_binding", "_run", "_values", "lock", "outs", "x")

    def __init__(self, session: ort.InferenceSession, input_name: str, input_shape: list[int], outputs):
        self.x = np.zeros(input_shape, dtype=np.float32)
        binding = session.io_binding()
        values = [ort.OrtValue.ortvalue_from_numpy(self.x)]  # wraps the array's memory (CPU: no copy)
        binding.bind_ortvalue_input(input_name, values[0])
        self.outs: list[np.ndarray] = []
        for name, width in outputs:
            buf = np.zeros((1, width), dtype=np.float32)
            values.append(ort.OrtValue.ortvalue_from_numpy(buf))
            binding.bind_ortvalue_output(name, values[-1])
            self.outs.append(buf)
        self._binding, self._values = binding, values  # the OrtValues live as long as the buffers
        self._run = session.run_with_iobinding
        self.lock = threading.Lock()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """x (1, ...) float32 → the bound output buffers (overwritten by the next run)."""
        np.copyto(self.x, x)
        self._run(self._binding)
        return self.outs


def make_row_runner(model: LoadedModel) -> RowRunner | None:
    """A `RowRunner` for `model` when its session runs on the CPU only and its input and fetched
    outputs are float32 of fixed width; checked against `session.run` on the warm-up row (else None)."""
    m = model.manifest
    if model.providers != ["CPUExecutionProvider"] or m.input.dtype != "float32":
        return None
    shape = [1 if d is None else d for d in m.input.shape]
    shape[0] = 1
    if not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    specs = {o.name: o for o in m.outputs}
    outputs = []
    for name in model._outputs:
        o = specs.get(name)
        if o is None or o.dtype != "float32" or len(o.shape) != 2 or not isinstance(o.shape[1], int):
            return None
        outputs.append((name, o.shape[1]))
    try:
        runner = RowRunner(model.session, model._input, shape, outputs)
        x = np.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
        want = model.session.run(model._outputs, {model._input: x})
        got = runner.run(x)
        if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(want, got)):
            log.warning("%s: the IO-binding path disagrees with session.run; not using it", m.model_name)
            return None
    except Exception as e:  # an onnxruntime build without IO binding for this graph: session.run only
        log.warning("%s: no IO-binding path (%s); using session.run", m.model_name, str(e).splitlines()[0])
        return None
    return runner


def _check_graph(session: ort.InferenceSession, manifest: Manifest) -> tuple[str, list[str]]:
    """The graph's input/outputs must be the manifest's; returns (input name, manifest output names)."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != manifest.input.name:
        raise ModelLoadError(
            f"graph inputs {[i.name for i in inputs]} do not match manifest input {manifest.input.name!r}; "
            "re-export the bundle"
        )
    rank = len(manifest.input.shape)
    if len(inputs[0].shape) != rank or rank not in (2, 3):
        raise ModelLoadError(
            f"graph input rank {len(inputs[0].shape)} != manifest rank {rank} (expected 2 or 3)"
        )
    if manifest.input.shape[-1] != len(manifest.feature_set.names):
        raise ModelLoadError(
            f"manifest input width {manifest.input.shape[-1]} != {len(manifest.feature_set.names)} feature names"
        )
    graph_outs = [o.name for o in session.get_outputs()]
    wanted = [o.name for o in manifest.outputs]
    missing = [n for n in wanted if n not in graph_outs]
    if missing or not wanted:
        raise ModelLoadError(
            f"graph outputs {graph_outs} lack manifest outputs {missing or wanted}; re-export"
        )
    return inputs[0].name, wanted


def _plan_outputs(manifest: Manifest) -> dict[str, object]:
    """Which outputs to fetch, in `LoadedModel.run_all`'s order: the task's, confidence, width-1 extras,
    feature_deviation. Other outputs (wider, unnamed here) are not fetched."""
    task, rest = manifest.outputs[0].name, manifest.outputs[1:]
    n_features = len(manifest.feature_set.names)
    conf = any(o.name == CONFIDENCE for o in rest)
    extras, deviation = [], False
    for o in rest:
        width = o.shape[-1] if len(o.shape) == 2 else None
        if o.name == CONFIDENCE:
            continue
        if o.name == DEVIATION:
            if width != n_features:
                raise ModelLoadError(
                    f"output {DEVIATION!r} has shape {o.shape} in the manifest; expected [None, {n_features}] "
                    "(one deviation per input feature)"
                )
            deviation = True
        elif width == 1:
            extras.append(o.name)
        else:
            log.warning(
                "%s: output %r of shape %s is not served (only width-1 extras, %r and %r are)",
                manifest.model_name,
                o.name,
                o.shape,
                CONFIDENCE,
                DEVIATION,
            )
    names = [task] + ([CONFIDENCE] if conf else []) + extras + ([DEVIATION] if deviation else [])
    return {"outputs": names, "conf": conf, "extras": tuple(extras), "deviation": deviation}


def warm_up(model: LoadedModel, runs: int) -> float:
    """Run the session `runs` times on a constant row; check shapes and finiteness; median µs."""
    shape = [1 if d is None else d for d in model.manifest.input.shape]
    shape[0] = 1
    x = np.zeros(shape, dtype=np.float32)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        ret, conf = model.run(x)
        times.append(time.perf_counter_ns() - t0)
    h = len(model.horizons)
    if ret.shape != (1, h):
        raise ModelLoadError(
            f"warm-up: returns output has shape {ret.shape}, expected (1, {h}) from the manifest"
        )
    _, _, rest = model.run_all(x)
    expected = [(1, 1)] * len(model.extra_names) + ([(1, model.n_features)] if model.has_deviation else [])
    names = list(model.extra_names) + ([DEVIATION] if model.has_deviation else [])
    for name, out, shape in zip(names, rest, expected):
        if out.shape != shape:
            raise ModelLoadError(f"warm-up: output {name!r} has shape {out.shape}, expected {shape}")
    if not np.all(np.isfinite(ret)) or (conf is not None and not np.all(np.isfinite(conf))):
        raise ModelLoadError("warm-up: the model returned NaN/inf on a zero row; refusing to serve it")
    return float(np.median(times)) / 1e3


def load_model(
    bundle_dir: Path,
    cfg: RuntimeConfig,
    version: str = "local",
    source: str | None = None,
) -> LoadedModel:
    """Read, check, build a session and warm up; raises ModelLoadError naming what failed."""
    try:
        onnx_bytes, manifest = read_bundle(Path(bundle_dir))
    except BundleError as e:
        raise ModelLoadError(str(e)) from None
    providers = choose_providers(cfg.providers)
    cache = Path(bundle_dir).parent / f".{Path(bundle_dir).name}.optimized.onnx"
    try:
        session = make_session(
            onnx_bytes, providers=provider_options(cfg, providers), options=session_options(cfg, cache)
        )
    except Exception as e:  # onnxruntime raises its own exception zoo for corrupt graphs
        raise ModelLoadError(
            f"onnxruntime cannot load {bundle_dir}/model.onnx: {str(e).splitlines()[0][:300]}"
        ) from None
    input_name, _ = _check_graph(session, manifest)
    plan = _plan_outputs(manifest)
    below = manifest.extra.get("below_baselines") or {}
    model = LoadedModel(
        manifest=manifest,
        version=str(version),
        session=session,
        sha256=sha256_bytes(onnx_bytes),
        source=source or str(bundle_dir),
        providers=session.get_providers(),
        _input=input_name,
        _outputs=plan["outputs"],
        withheld=tuple(int(h) for h in below) if cfg.withhold_below_baselines else (),
        has_confidence=plan["conf"],
        extra_names=plan["extras"],
        has_deviation=plan["deviation"],
        raises_alerts="threat_level" in plan["extras"],
    )
    try:
        model.warmup_us = warm_up(model, cfg.warmup_runs)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"warm-up failed: {str(e).splitlines()[0][:300]}") from None
    if ROW_BINDING:
        model.row_runner = make_row_runner(model)
    del onnx_bytes
    release_free_heap()
    return model


def release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc `malloc_trim`); a no-op elsewhere.

    Building a session parses the protobuf and copies the graph, then frees most of it; glibc keeps
    those pages, ~10 MB per tree-ensemble model (measured: RSS 132 → 124 MB with two 200-tree
    LightGBM bundles). Called after a load, off the request path.
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc is loaded already
    except (OSError, AttributeError):  # not glibc (macOS, musl without malloc_trim)
        pass
