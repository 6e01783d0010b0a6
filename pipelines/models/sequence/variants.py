"""Faster variants of an exported sequence-model graph, each behind a decision gate (issue 17).

`optimise_bundle(onnx_bytes, variant, parity_rows, tolerance, labels=...)` turns the float32 export
into one of:
- "fp32": the export unchanged (the default everywhere);
- "optimized": the same float32 weights, graph rewritten for single-window CPU latency:
  1. attention fusion (`fuse_attention`, this module): each self-attention block the zoo's transformer
     exports (packed qkv MatMul + Add → Split → Reshape/Transpose → MatMul → Div → Softmax → MatMul →
     Transpose → Reshape) becomes one `com.microsoft.Attention` node; the reshape-target arithmetic
     (Shape/Gather/Unsqueeze/Concat) that fed it is dropped. onnxruntime.transformers' own BERT
     attention fusion does not match this pattern (packed qkv, no mask), hence the pass here;
  2. onnxruntime's own graph optimiser run offline at the "extended" level and saved (constant
     folding, Gelu/BiasGelu, SkipLayerNormalization, MatMul+scale fusions: what a session would do at
     load, minus the machine-specific layout changes of "all");
- "int8": dynamic quantisation (`onnxruntime.quantization.quantize_dynamic`: int8 weights per output
  channel, uint8 activations quantised per call) of the "optimized" graph's MatMul and Attention nodes;
- "fp16": float16 weights and activations with float32 input/output (`keep_io_types`) and the input
  normalisation kept in float32; meant for CUDA / TensorRT (the CPU provider runs it slower than fp32).

The gate (`gate_variant`) compares the variant with the fp32 graph on real rows (the export's parity
rows) and, given labels, on direction accuracy; a variant that changes decisions beyond its
`VariantTolerance` raises `VariantGateError` saying by how much (sign agreement, flipped cells, max
abs diff against the spread of the fp32 predictions, accuracy change in percentage points). A variant
that passes carries its gate report in the graph's metadata (`kairos.variant`, `kairos.variant_gate`),
and `optimise_bundle_dir` records it in the manifest's `extra.export_variant` too. Inputs and outputs
keep the bundle contract (names, float32, shapes), so serving loads a variant like any bundle.

Training (`export.variant` in configs/defaults.yaml) calls `choose_export_variant`: the variant ships only
if, besides the gate on the final model's parity rows, the newest walk-forward fold's model turned into
the same variant keeps its direction accuracy on that fold's out-of-sample rows (within
`export.variant_max_accuracy_drop_pp`); otherwise the fp32 export ships and the manifest says why.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from pipelines.contracts.errors import ParityError
from pipelines.contracts.onnx import make_session

Variant = Literal["fp32", "optimized", "int8", "fp16"]
VARIANTS: tuple[str, ...] = ("fp32", "optimized", "int8", "fp16")
MS_DOMAIN = "com.microsoft"
INPUT_NAME = "features"
META_VARIANT = "kairos.variant"
META_GATE = "kairos.variant_gate"
log = logging.getLogger("kairos.models.sequence")


class VariantGateError(ParityError):
    """A variant changes the model's outputs or decisions beyond its tolerance; it is not exported."""

    def __init__(self, message: str, report: VariantReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class VariantTolerance:
    """How far a variant may move from the fp32 graph on the gate rows.

    Attributes:
        max_rel_diff: max |variant − fp32| on the gated output, as a share of the std of the fp32
            output over the gate rows (scale-free: log returns ~1e-4, logits ~1).
        min_sign_agreement: share of (row, column) cells whose sign (the direction call) is the
            same as fp32's; None = not checked (unsigned outputs such as a log variance).
        max_accuracy_drop_pp: direction accuracy against the labels, fp32 minus variant, in
            percentage points, worst column; checked only when labels are given.
    """

    max_rel_diff: float
    min_sign_agreement: float | None = 0.99
    max_accuracy_drop_pp: float = 0.5


# Set from benchmarks/bench_deep_inference.py (each family's presets fitted 1 epoch on real FILUSDT
# windows, 2,000 held-out windows x 5 horizons): "optimized" measured bit-identical to fp32 (the tolerance
# leaves room for float32 rounding of other kernels); int8 moved outputs by 4-12 % of their spread and
# flipped 0.01-1 % of the direction calls (accuracy -0.06..-0.48 pp); fp16 by 0.2-0.8 %, flipping <= 0.14 %.
DEFAULT_TOLERANCES: dict[str, VariantTolerance] = {
    "fp32": VariantTolerance(max_rel_diff=0.0, min_sign_agreement=1.0, max_accuracy_drop_pp=0.0),
    "optimized": VariantTolerance(max_rel_diff=1e-3, min_sign_agreement=0.999, max_accuracy_drop_pp=0.1),
    "int8": VariantTolerance(max_rel_diff=0.25, min_sign_agreement=0.95, max_accuracy_drop_pp=0.5),
    "fp16": VariantTolerance(max_rel_diff=0.02, min_sign_agreement=0.99, max_accuracy_drop_pp=0.2),
}


@dataclass
class VariantReport:
    """What the gate measured for one variant against the fp32 graph (JSON-able via `to_dict`)."""

    variant: str
    output: str
    rows: int
    cells: int
    max_abs_diff: float
    fp32_std: float
    rel_diff: float
    sign_agreement: float | None
    flipped: int | None
    accuracy_fp32: list[float] | None
    accuracy_variant: list[float] | None
    accuracy_drop_pp: float | None
    other_outputs_max_abs: dict[str, float]
    tolerance: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        parts = [
            f"max abs diff {self.max_abs_diff:.3g} ({self.rel_diff:.3g} x the fp32 spread {self.fp32_std:.3g})"
        ]
        if self.sign_agreement is not None:
            parts.append(
                f"sign agreement with fp32 {self.sign_agreement:.2%} ({self.flipped} of {self.cells} flipped)"
            )
        if self.accuracy_drop_pp is not None:
            parts.append(
                f"direction accuracy {_pct(self.accuracy_variant)} vs fp32 {_pct(self.accuracy_fp32)} "
                f"(worst drop {self.accuracy_drop_pp:+.2f} pp)"
            )
        return "; ".join(parts)

    def message(self) -> str:
        head = (
            f"{self.variant} variant rejected on {self.rows} rows, output {self.output!r}: "
            if self.failures
            else f"{self.variant} variant passed on {self.rows} rows, output {self.output!r}: "
        )
        tail = ("; ".join(self.failures) + f" [{self.summary()}]") if self.failures else self.summary()
        return head + tail


def _pct(values: list[float] | None) -> str:
    return "[" + ", ".join(f"{100 * v:.2f} %" for v in values or []) + "]"


# -- graph helpers -------------------------------------------------------------------------------
class _Graph:
    """Producer/consumer maps and constant lookup over one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.inits = {i.name: i for i in g.initializer}
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def only(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The single consumer of `name` when it is an `op_type` node (and `name` is not a graph output)."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None or node.op_type != "Transpose":
        return None
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _num_heads(g: _Graph, reshape: onnx.NodeProto) -> int | None:
    """h of a Reshape to (B, T, h, dh): a constant target, or the Concat that builds it at run time."""
    target = g.const(reshape.input[1])
    if target is not None and target.size == 4:
        return int(target[2])
    concat = g.made_by(reshape.input[1], "Concat")
    if concat is not None and len(concat.input) == 4:
        h = g.const(concat.input[2])
        if h is not None and h.size == 1:
            return int(h.reshape(-1)[0])
    return None


def _match_attention(
    g: _Graph, softmax: onnx.NodeProto
) -> tuple[dict[str, Any], list[onnx.NodeProto]] | None:
    """The fused node's inputs/attributes and the nodes it replaces, for one Softmax; None = no match."""
    scaled = g.producer.get(softmax.input[0])
    scale_node = None
    if scaled is not None and scaled.op_type in ("Div", "Mul"):
        c = g.const(scaled.input[1])
        if c is None or c.size != 1 or g.only(scaled.output[0], "Softmax") is None:
            return None
        scale = 1.0 / float(c.reshape(-1)[0]) if scaled.op_type == "Div" else float(c.reshape(-1)[0])
        scale_node, qk = scaled, g.made_by(scaled.input[0], "MatMul")
    else:
        scale, qk = 1.0, g.made_by(softmax.input[0], "MatMul")
    if qk is None:
        return None
    tq, tk = g.producer.get(qk.input[0]), g.producer.get(qk.input[1])
    av = g.only(softmax.output[0], "MatMul")
    if (
        av is None
        or av.input[0] != softmax.output[0]
        or _perm(tq) != [0, 2, 1, 3]
        or _perm(tk) != [0, 2, 3, 1]
    ):
        return None
    tv = g.producer.get(av.input[1])
    to = g.only(av.output[0], "Transpose")
    ro = g.only(to.output[0], "Reshape") if to is not None else None
    if _perm(tv) != [0, 2, 1, 3] or _perm(to) != [0, 2, 1, 3] or ro is None:
        return None
    reshapes = [g.made_by(t.input[0], "Reshape") for t in (tq, tk, tv)]
    if any(r is None for r in reshapes):
        return None
    split = g.made_by(reshapes[0].input[0], "Split")
    if split is None or len(split.output) != 3 or [r.input[0] for r in reshapes] != list(split.output):
        return None
    add = g.made_by(split.input[0], "Add")
    if add is None or g.only(add.output[0], "Split") is None:
        return None
    mm_idx = 0 if g.made_by(add.input[0], "MatMul") is not None else 1
    mm = g.made_by(add.input[mm_idx], "MatMul")
    bias_name = add.input[1 - mm_idx]
    if mm is None or g.only(mm.output[0], "Add") is None:
        return None
    w, b = g.const(mm.input[1]), g.const(bias_name)
    if w is None or b is None or w.ndim != 2 or b.shape != (w.shape[1],) or w.shape[1] % 3:
        return None
    hidden = w.shape[1] // 3
    sizes = g.const(split.input[1]) if len(split.input) > 1 else None
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    if (sizes is not None and list(sizes) != [hidden] * 3) or axis not in (-1, 2):
        return None
    heads = _num_heads(g, reshapes[0])
    if not heads or hidden % heads:
        return None
    for node in (split, *reshapes, tq, tk, tv, qk):
        if any(len(g.consumers.get(o, [])) != 1 for o in node.output):
            return None
    if mm.input[1] not in g.inits or bias_name not in g.inits:
        return None
    fused = {
        "inputs": [mm.input[0], mm.input[1], bias_name],
        "output": ro.output[0],
        "num_heads": heads,
        "scale": scale,
        "name": (softmax.name or "attention").rsplit("/", 1)[0] + "/FusedAttention",
    }
    replaced = [mm, add, split, *reshapes, tq, tk, tv, qk, softmax, av, to, ro]
    if scale_node is not None:
        replaced.append(scale_node)
    return fused, replaced


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs is used (repeatedly), then unused initializers."""
    g = model.graph
    keep_names = {o.name for o in g.output}
    while True:
        used = set(keep_names) | {i for n in g.node for i in n.input}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def _ensure_ms_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def fuse_attention(onnx_bytes: bytes) -> tuple[bytes, int]:
    """Replace every matched self-attention block with one `com.microsoft.Attention` node.

    The node computes softmax(q kᵀ · scale) v per head from the packed qkv projection (weights
    [D, 3D], bias [3D]), i.e. exactly the subgraph it replaces, in one kernel. Graphs without the
    pattern (lstm_attention, tft, mamba: their attention has a single query or shared values) come
    back unchanged. Returns (graph bytes, number of blocks fused).
    """
    model = onnx.load_model_from_string(onnx_bytes)
    g = _Graph(model)
    matches = [
        m for s in list(model.graph.node) if s.op_type == "Softmax" for m in [_match_attention(g, s)] if m
    ]
    if not matches:
        return onnx_bytes, 0
    nodes = list(model.graph.node)
    position = {id(n): i for i, n in enumerate(nodes)}
    replaced_ids: set[int] = set()
    insert_at: dict[int, onnx.NodeProto] = {}
    for fused, replaced in matches:
        replaced_ids |= {id(n) for n in replaced}
        last = max(position[id(n)] for n in replaced)  # every input of the fused node exists before it
        insert_at[last] = helper.make_node(
            "Attention",
            fused["inputs"],
            [fused["output"]],
            name=fused["name"],
            domain=MS_DOMAIN,
            num_heads=fused["num_heads"],
            scale=fused["scale"],
        )
    out = []
    for i, n in enumerate(nodes):
        if id(n) not in replaced_ids:
            out.append(n)
        if i in insert_at:
            out.append(insert_at[i])
    del model.graph.node[:]
    model.graph.node.extend(out)
    _ensure_ms_opset(model)
    _drop_dead_nodes(model)
    return model.SerializeToString(), len(matches)


def ort_offline_optimise(onnx_bytes: bytes, level: str = "extended") -> bytes:
    """onnxruntime's graph optimiser applied once and saved: the graph a CPU session would build at load.

    "extended" (not "all"): the "all" level adds layout transforms tied to this machine's CPU.
    """
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimised.onnx"
        so = _quiet_options()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = str(path)
        make_session(onnx_bytes, options=so)
        model = onnx.load(str(path))  # small graphs: ORT writes every weight inline
    from onnx.external_data_helper import uses_external_data

    if any(uses_external_data(t) for t in model.graph.initializer):  # pragma: no cover - graphs < 2 GB
        raise VariantGateError("onnxruntime wrote the optimised graph with external data; not self-contained")
    return model.SerializeToString()


def quantize_int8(onnx_bytes: bytes, *, per_channel: bool = True, optimised: bool = False) -> bytes:
    """Dynamic int8 quantisation of MatMul / Attention / Gemm weights (activations quantised per call).

    `optimised`: the graph already went through onnxruntime's optimiser (`ort_offline_optimise`), which
    is the "pre-processing" the quantiser asks for; it is marked so (the quantiser otherwise logs a
    warning through the root logger, configuring it as a side effect).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if optimised:
        model = onnx.load_model_from_string(onnx_bytes)
        helper.set_model_props(
            model,
            {**{p.key: p.value for p in model.metadata_props}, "onnx.quant.pre_process": "onnxruntime.quant"},
        )
        onnx_bytes = model.SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=["MatMul", "Attention", "Gemm"],
            # contrib ops (Attention, SkipLayerNormalization) have no ONNX type inference: default float32
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return dst.read_bytes()


def _drop_cast_round_trips(model: onnx.ModelProto, float32_nodes: Sequence[str]) -> int:
    """Rewire Cast(to float32) of Cast(to float16) of a float32 tensor to that tensor; returns how many.

    `keep_io_types` casts the graph input to float16 before anything else, and casts between nodes
    kept in float32 (`float32_nodes`) through float16 too: raw features (volumes ~1e6, prices with a
    std of 2e-4) would overflow or lose their digits there, before the normalisation that makes them
    float16-safe. A tensor counts as float32 when it is a float32 graph input or the output of a
    `float32_nodes` node.
    """
    g = _Graph(model)
    kept = set(float32_nodes)
    f32 = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    f32 |= {o for n in model.graph.node if n.name in kept for o in n.output}
    rewired = 0
    for node in list(model.graph.node):
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        first = g.made_by(node.input[0], "Cast") if node.op_type == "Cast" else None
        if to != onnx.TensorProto.FLOAT or first is None or first.input[0] not in f32:
            continue
        if next((a.i for a in first.attribute if a.name == "to"), None) != onnx.TensorProto.FLOAT16:
            continue
        for user in g.consumers.get(node.output[0], []):
            user.input[:] = [first.input[0] if i == node.output[0] else i for i in user.input]
        rewired += 1
    _drop_dead_nodes(model)
    return rewired


def convert_fp16(onnx_bytes: bytes) -> bytes:
    """float16 weights and activations, float32 input/output; the input normalisation stays float32
    and reads the float32 input directly (`_drop_cast_round_trips`)."""
    from onnxruntime.transformers import float16

    model = onnx.load_model_from_string(onnx_bytes)
    kept = _scaling_nodes(model)
    model = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=kept)
    _drop_cast_round_trips(model, kept)
    return model.SerializeToString()


def _scaling_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the normalisation nodes ((x - mean) / std on the input), kept in float32 under fp16:
    raw feature values and their means can exceed float16's range/precision before they are scaled."""
    first = [n for n in model.graph.node if INPUT_NAME in n.input]
    outs = {o for n in first for o in n.output}
    second = [n for n in model.graph.node if outs & set(n.input)]
    return [n.name for n in first + second if n.name]


def build_variant(onnx_bytes: bytes, variant: str) -> bytes:
    """The variant's graph (ungated): see the module docstring for what each variant does."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown export variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "fp32":
        return onnx_bytes
    if variant == "fp16":
        return convert_fp16(onnx_bytes)
    fused, _ = fuse_attention(onnx_bytes)
    optimised = ort_offline_optimise(fused)
    return optimised if variant == "optimized" else quantize_int8(optimised, optimised=True)


# -- the gate ------------------------------------------------------------------------------------
def _quiet_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only (constant-folding notes on float16 graphs are noise)
    return so


def _run_all(onnx_bytes: bytes, X: np.ndarray, batch: int = 1024) -> dict[str, np.ndarray]:
    sess = make_session(onnx_bytes, options=_quiet_options())
    input_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    X = np.ascontiguousarray(X, dtype=np.float32)
    for i in range(0, len(X), batch):
        for n, v in zip(names, sess.run(names, {input_name: X[i : i + batch]})):
            parts[n].append(np.asarray(v, dtype=np.float64))
    return {n: np.concatenate(v).reshape(len(X), -1) for n, v in parts.items()}


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(d.max()) if d.size and np.isfinite(d).all() else (0.0 if not d.size else math.inf)


def _direction_accuracy(pred: np.ndarray, labels: np.ndarray) -> list[float]:
    out = []
    for j in range(pred.shape[1]):
        y = labels[:, j]
        ok = np.isfinite(y) & (y != 0)
        out.append(float(np.mean(np.sign(pred[ok, j]) == np.sign(y[ok]))) if ok.any() else math.nan)
    return out


def gate_variant(
    reference: bytes,
    candidate: bytes,
    rows: np.ndarray,
    tolerance: VariantTolerance,
    *,
    labels: np.ndarray | None = None,
    output: str | None = None,
    variant: str = "candidate",
) -> VariantReport:
    """Measure `candidate` against the fp32 `reference` graph on `rows` (never raises for a mismatch).

    Args:
        reference: the fp32 export.
        candidate: the variant's graph.
        rows: real input rows, float32 [N, T, F] (the export's parity rows).
        tolerance: the variant's allowed change.
        labels: [N, H] realised targets for `rows` (NaN = none); their sign is the right direction.
            Pass out-of-sample rows (the walk-forward test windows) to gate walk-forward accuracy.
        output: the gated output; None = the graph's first (the task's prediction).
        variant: its name, for the messages.
    """
    if len(rows) == 0:
        raise VariantGateError(f"{variant} gate got 0 rows; pass the export's parity rows")
    ref, got = _run_all(reference, rows), _run_all(candidate, rows)
    if set(ref) != set(got):
        raise VariantGateError(f"{variant} graph outputs {sorted(got)} differ from fp32's {sorted(ref)}")
    name = output or next(iter(ref))
    a, b = ref[name], got[name]
    failures: list[str] = []
    if not np.isfinite(b).all():
        failures.append(f"{int((~np.isfinite(b)).sum())} non-finite values in {name!r}")
    diff = np.abs(b - a)
    max_abs = float(diff.max()) if np.isfinite(diff).all() else math.inf
    std = float(np.std(a))
    rel = max_abs / std if std > 0 else (0.0 if max_abs == 0 else math.inf)
    if not rel <= tolerance.max_rel_diff:
        failures.append(
            f"max abs diff {max_abs:.3g} is {rel:.3g} x the spread of fp32 predictions (std {std:.3g}) "
            f"> {tolerance.max_rel_diff:g}"
        )
    agree = flipped = None
    if tolerance.min_sign_agreement is not None:
        same = np.sign(a) == np.sign(b)
        agree, flipped = float(same.mean()), int((~same).sum())
        if agree < tolerance.min_sign_agreement:
            failures.append(
                f"sign agreement with fp32 {agree:.2%} < {tolerance.min_sign_agreement:.2%}: "
                f"{flipped} of {same.size} direction calls flipped"
            )
    acc_a = acc_b = drop = None
    if labels is not None:
        labels = np.asarray(labels, dtype=np.float64).reshape(len(rows), -1)
        if labels.shape[1] != a.shape[1]:
            raise VariantGateError(f"labels have {labels.shape[1]} columns, output {name!r} has {a.shape[1]}")
        acc_a, acc_b = _direction_accuracy(a, labels), _direction_accuracy(b, labels)
        drops = [100 * (x - y) for x, y in zip(acc_a, acc_b) if not (math.isnan(x) or math.isnan(y))]
        drop = max(drops) if drops else 0.0
        if drop > tolerance.max_accuracy_drop_pp:
            j = int(np.nanargmax([x - y for x, y in zip(acc_a, acc_b)]))
            failures.append(
                f"direction accuracy falls {drop:.2f} pp (column {j}: {100 * acc_a[j]:.2f} % → "
                f"{100 * acc_b[j]:.2f} %) > {tolerance.max_accuracy_drop_pp:g} pp"
            )
    others = {n: _max_abs(got[n], ref[n]) for n in ref if n != name}
    return VariantReport(
        variant=variant,
        output=name,
        rows=len(rows),
        cells=int(a.size),
        max_abs_diff=max_abs,
        fp32_std=std,
        rel_diff=rel,
        sign_agreement=agree,
        flipped=flipped,
        accuracy_fp32=acc_a,
        accuracy_variant=acc_b,
        accuracy_drop_pp=drop,
        other_outputs_max_abs=others,
        tolerance=asdict(tolerance),
        failures=failures,
    )


def _with_metadata(onnx_bytes: bytes, variant: str, report: VariantReport) -> bytes:
    model = onnx.load_model_from_string(onnx_bytes)
    for key in (META_VARIANT, META_GATE):
        for p in [p for p in model.metadata_props if p.key == key]:
            model.metadata_props.remove(p)
    helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in model.metadata_props},
            META_VARIANT: variant,
            META_GATE: json.dumps(report.to_dict(), default=float),
        },
    )
    return model.SerializeToString()


def graph_variant(onnx_bytes: bytes) -> str:
    """The variant a graph was built as ("fp32" when it carries no variant metadata)."""
    model = onnx.load_model_from_string(onnx_bytes)
    return next((p.value for p in model.metadata_props if p.key == META_VARIANT), "fp32")


def optimise_bundle(
    onnx_bytes: bytes,
    variant: str,
    parity_rows: np.ndarray,
    tolerance: VariantTolerance | None = None,
    *,
    labels: np.ndarray | None = None,
    output: str | None = None,
) -> bytes:
    """Build `variant` of an exported fp32 graph and gate it; returns its bytes or raises.

    Args:
        onnx_bytes: the fp32 export (what `to_onnx()` returns and the parity check passed).
        variant: "fp32" (returned unchanged) | "optimized" | "int8" | "fp16".
        parity_rows: real input windows [N, T, F] to compare on (the export's parity rows).
        tolerance: the allowed change; None = `DEFAULT_TOLERANCES[variant]`.
        labels: optional [N, H] targets of `parity_rows`: also gate the direction accuracy.
        output: the gated output; None = the graph's first.

    Returns:
        The variant's serialised graph, self-contained, with the gate report in its metadata.

    Raises:
        VariantGateError: the variant moves predictions or decisions beyond `tolerance`; the message
            says by how much. `.report` holds every measured figure.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown export variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "fp32":
        return onnx_bytes
    tol = tolerance or DEFAULT_TOLERANCES[variant]
    candidate = build_variant(onnx_bytes, variant)
    report = gate_variant(
        onnx_bytes, candidate, parity_rows, tol, labels=labels, output=output, variant=variant
    )
    if not report.passed:
        raise VariantGateError(report.message() + "; the fp32 export stays the bundle's model", report)
    return _with_metadata(candidate, variant, report)


def optimise_bundle_dir(
    src: Path,
    dst: Path,
    variant: str,
    parity_rows: np.ndarray,
    tolerance: VariantTolerance | None = None,
    *,
    labels: np.ndarray | None = None,
) -> Path:
    """A bundle directory's `variant`, written to `dst` (gate report in manifest `extra.export_variant`).

    The manifest's first output is gated; its sign is checked only when it is a direction call
    (`Manifest.signed`), e.g. not for a volatility model's log variance.
    """
    from pipelines.contracts.bundle import read_bundle, write_bundle

    onnx_bytes, manifest = read_bundle(src)
    tol = tolerance or DEFAULT_TOLERANCES[variant]
    if not manifest.signed and tol.min_sign_agreement is not None:
        tol = replace(tol, min_sign_agreement=None)
    out = optimise_bundle(
        onnx_bytes, variant, parity_rows, tol, labels=labels, output=manifest.outputs[0].name
    )
    report = json.loads(
        next((p.value for p in onnx.load_model_from_string(out).metadata_props if p.key == META_GATE), "{}")
    )
    extra = {**manifest.extra, "export_variant": {"variant": variant, **({"gate": report} if report else {})}}
    return write_bundle(Path(dst), out, replace(manifest, extra=extra))


def variant_sizes(onnx_bytes: bytes, variants: Sequence[str] = VARIANTS) -> dict[str, int]:
    """Serialised size in bytes of each (ungated) variant: a quick look at what int8 / fp16 save."""
    return {v: len(build_variant(onnx_bytes, v)) for v in variants}


@dataclass
class ExportChoice:
    """What `choose_export_variant` decided: the graph the bundle ships and why (JSON-able `record`)."""

    onnx_bytes: bytes
    variant: str  # what ships: the requested variant, or "fp32" when it was rejected
    requested: str
    message: str  # one line with the numbers
    record: dict[str, Any]  # manifest extra["export_variant"]

    @property
    def rejected(self) -> bool:
        return self.variant != self.requested


def choose_export_variant(
    fp32: bytes,
    variant: str,
    parity_rows: np.ndarray,
    *,
    walk_forward: tuple[bytes, np.ndarray, np.ndarray],
    output: str,
    signed: bool = True,
    max_accuracy_drop_pp: float | None = None,
) -> ExportChoice:
    """The bundle's graph for the training config's `export.variant`: the variant if it passes both gates,
    else the fp32 export (never raises for a gate failure).

    1. Walk-forward gate: the newest fold's model (its fp32 graph, `walk_forward[0]`) turned into the same
       variant, on that fold's out-of-sample test windows with their labels (`walk_forward[1:]`): direction
       accuracy per horizon may not drop more than `max_accuracy_drop_pp` (None: the variant's default)
       below its fp32 graph's, and the variant's prediction and sign tolerances hold there too.
    2. Export gate: the final model's variant against its fp32 export on the parity rows.
    An unsigned output (e.g. a log variance) has no direction: signs and accuracy are then not gated.

    Args:
        fp32: the final model's fp32 export (parity-checked).
        variant: "fp32" | "optimized" | "int8" | "fp16".
        parity_rows: the export's parity windows [N, T, F].
        walk_forward: (newest fold model's fp32 graph, its test windows [M, T, F], their labels [M, H]).
        output: the gated output (the task's prediction).
        signed: the output is a direction call.
        max_accuracy_drop_pp: the walk-forward tolerance, pp, worst horizon.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown export variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "fp32":
        return ExportChoice(fp32, "fp32", "fp32", "fp32 export (no variant requested)", {"variant": "fp32"})
    tol = DEFAULT_TOLERANCES[variant]
    if max_accuracy_drop_pp is not None:
        tol = replace(tol, max_accuracy_drop_pp=float(max_accuracy_drop_pp))
    if not signed:
        tol = replace(tol, min_sign_agreement=None)
    fold_fp32, fold_rows, fold_labels = walk_forward

    def rejected(why: str, gates: dict[str, Any] | None = None) -> ExportChoice:
        message = f"{why}; the fp32 export stays the bundle's model"
        log.warning("%s", message)
        record = {
            "variant": "fp32",
            "requested": variant,
            "rejected": message,
            **({"gates": gates} if gates else {}),
        }
        return ExportChoice(fp32, "fp32", variant, message, record)

    try:
        fold_candidate, candidate = build_variant(fold_fp32, variant), build_variant(fp32, variant)
    except Exception as e:  # a graph the converter cannot handle is a rejection, not a crash
        return rejected(f"{variant} variant could not be built ({type(e).__name__}: {e})")
    try:
        reports = {
            "walk_forward": gate_variant(
                fold_fp32,
                fold_candidate,
                np.asarray(fold_rows, dtype=np.float32),
                tol,
                labels=fold_labels if signed else None,
                output=output,
                variant=variant,
            ),
            "export": gate_variant(
                fp32,
                candidate,
                np.asarray(parity_rows, dtype=np.float32),
                tol,
                output=output,
                variant=variant,
            ),
        }
    except VariantGateError as e:  # e.g. the variant's outputs differ from fp32's
        return rejected(f"{variant} variant rejected: {e}")
    failed = [(where, r) for where, r in reports.items() if not r.passed]
    gates = {where: r.to_dict() for where, r in reports.items()}
    wf = reports["walk_forward"]
    if failed:
        where, r = failed[0]
        label = "walk-forward gate (newest fold, out-of-sample)" if where == "walk_forward" else "export gate"
        return rejected(f"{label}: {r.message()}", gates)
    message = f"{variant} variant shipped; walk-forward gate: {wf.summary()}"
    log.info("%s", message)
    out = _with_metadata(candidate, variant, reports["export"])
    return ExportChoice(out, variant, variant, message, {"variant": variant, "gates": gates})
