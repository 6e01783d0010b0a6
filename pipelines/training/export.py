"""ONNX export: per-horizon LightGBM boosters → ONE self-contained graph.

Input `features` float32 [N, F] (dynamic N) → output `returns` float32 [N, H]. Each booster is
converted by onnxmltools (LightGBM converters only exist up to opset 15); every tensor and node
of graph j gets the prefix `h{j}_` so the graphs can share one input, and their [N, 1] outputs
are concatenated along axis 1. The result has all weights inline (no external `.data` file),
passes `onnx.checker` and is what the serving bundle ships as `model.onnx`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from pipelines.contracts.errors import KairosError
from pipelines.models.base import INPUT_NAME, OUTPUT_NAME


class ExportError(KairosError):
    """A model could not be converted to a valid self-contained ONNX graph."""


def prefix_graph(
    graph: onnx.GraphProto, prefix: str, *, keep: set[str] = frozenset(), rename: dict[str, str] | None = None
) -> tuple[list, list, dict[str, str]]:
    """Nodes and initializers of `graph` with every tensor/node name prefixed, so graphs can be merged.

    Names in `keep` stay as they are; names in `rename` take the given name (e.g. a member's input wired to
    the merged graph's tensor). Returns (nodes, initializers, {output name: renamed output}). Only flat
    graphs (no subgraph attributes, as tree ensembles and exported sequence models are) are supported.
    """
    rename = rename or {}

    def rn(name: str) -> str:
        if not name or name in keep:
            return name
        return rename.get(name, prefix + name)

    nodes = []
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ExportError(
                f"node {node.name!r} ({node.op_type}) has a subgraph; merging supports flat graphs only"
            )
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + (node.name or node.op_type)
        del new.input[:]
        new.input.extend(rn(i) for i in node.input)
        del new.output[:]
        new.output.extend(rn(o) for o in node.output)
        nodes.append(new)
    inits = []
    for init in graph.initializer:
        new = TensorProto()
        new.CopyFrom(init)
        new.name = rn(init.name)
        inits.append(new)
    return nodes, inits, {o.name: rn(o.name) for o in graph.output}


def merge_column_models(
    parts: Sequence[onnx.ModelProto],
    n_features: int,
    *,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> onnx.ModelProto:
    """Merge single-output models (each [N, F] → [N, 1], same input name) into one [N, F] → [N, H].

    Args:
        parts: one converted model per horizon, in output-column order.
        n_features: F.
        input_name: the shared input tensor name every part reads.
        output_name: name of the concatenated output.
    """
    nodes, inits, outs = [], [], []
    opsets: dict[str, int] = {}
    for j, part in enumerate(parts):
        if [i.name for i in part.graph.input] != [input_name]:
            raise ExportError(
                f"part {j} reads inputs {[i.name for i in part.graph.input]}; expected [{input_name!r}]"
            )
        if len(part.graph.output) != 1:
            raise ExportError(
                f"expected one output per horizon graph, got {[o.name for o in part.graph.output]}"
            )
        n, i, renamed = prefix_graph(part.graph, f"h{j}_", keep={input_name})
        o = next(iter(renamed.values()))
        nodes += n
        inits += i
        outs.append(o)
        for op in part.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    opsets[""] = max(opsets.get("", 0), 8)  # Concat with axis attribute: any opset >= 4
    nodes.append(helper.make_node("Concat", outs, [output_name], axis=1, name="concat_horizons"))
    graph = helper.make_graph(
        nodes,
        "kairos_returns",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, len(parts)])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="kairos",
    )
    model.ir_version = min(p.ir_version for p in parts)  # stay loadable by the runtime the parts target
    return model


def check_self_contained(model: onnx.ModelProto) -> None:
    """Raise ExportError when any tensor keeps its data in an external file; run onnx.checker."""
    from onnx.external_data_helper import uses_external_data

    external = [t.name for t in model.graph.initializer if uses_external_data(t)]
    if external:
        raise ExportError(
            f"ONNX graph stores {len(external)} tensors externally (e.g. {external[0]!r}); "
            "serialise with all weights inline (no external .data file)"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported ONNX graph is invalid: {str(e).splitlines()[0]}") from None


def _float32_at_most(t: float) -> float:
    """The largest float32 <= t: for any float32 x, `x <= t` (double) ⟺ `x <= result` (float32)."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def round_thresholds_down(part: onnx.ModelProto, booster: Any) -> int:
    """Make a converted booster's split thresholds exact for float32 inputs; returns splits fixed.

    LightGBM compares the float32 feature, widened to double, with a double threshold; the ONNX
    tree ensemble stores float32 thresholds. Rounding a threshold to the nearest float32 can put it
    above the double one, and a feature value lying between the two then takes the other branch
    (on real minute data this moved predictions by ~3e-5). Rounding down instead keeps every branch
    decision identical. The ONNX trees are walked from their roots beside the booster's dump, so the
    mapping does not depend on how the converter numbers nodes.
    """
    trees = booster.dump_model()["tree_info"]
    node = next((n for n in part.graph.node if n.op_type == "TreeEnsembleRegressor"), None)
    if node is None:
        raise ExportError("converted LightGBM graph has no TreeEnsembleRegressor node")
    attrs = {a.name: a for a in node.attribute}
    tree_ids, node_ids = list(attrs["nodes_treeids"].ints), list(attrs["nodes_nodeids"].ints)
    modes, features = list(attrs["nodes_modes"].strings), list(attrs["nodes_featureids"].ints)
    true_ids, false_ids = list(attrs["nodes_truenodeids"].ints), list(attrs["nodes_falsenodeids"].ints)
    values = list(attrs["nodes_values"].floats)
    position = {(t, n): i for i, (t, n) in enumerate(zip(tree_ids, node_ids))}
    fixed = 0
    for tree_id, tree in enumerate(trees):
        stack = [(tree["tree_structure"], 0)]  # (dump node, ONNX node id); the converter's root id is 0
        while stack:
            dump, node_id = stack.pop()
            if "left_child" not in dump:
                continue
            i = position[(tree_id, node_id)]
            t = float(dump["threshold"])
            if (
                modes[i] != b"BRANCH_LEQ"
                or features[i] != dump["split_feature"]
                or np.float32(t) != np.float32(values[i])
            ):
                raise ExportError(
                    f"tree {tree_id} node {node_id}: ONNX split does not match the booster dump; "
                    "onnxmltools changed its LightGBM layout - pin onnxmltools or update the export"
                )
            values[i] = _float32_at_most(t)
            fixed += 1
            stack += [(dump["left_child"], true_ids[i]), (dump["right_child"], false_ids[i])]
    del attrs["nodes_values"].floats[:]
    attrs["nodes_values"].floats.extend(values)
    return fixed


def lightgbm_to_onnx(boosters: Sequence[Any], n_features: int, *, target_opset: int = 15) -> bytes:
    """Convert per-horizon LightGBM boosters to one serialised self-contained ONNX model.

    Args:
        boosters: fitted `lightgbm.Booster`s, one per horizon, in horizon order.
        n_features: F, the input width.
        target_opset: ONNX opset (<= 15; onnxmltools' LightGBM converter stops there).
    """
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    if target_opset > 15:
        raise ExportError(
            f"target_opset {target_opset} is unsupported for LightGBM; set export.target_opset <= 15"
        )
    parts = [
        onnxmltools.convert_lightgbm(
            b, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))], target_opset=target_opset
        )
        for b in boosters
    ]
    for part, booster in zip(parts, boosters):
        round_thresholds_down(part, booster)
    model = merge_column_models(parts, n_features)
    check_self_contained(model)
    return model.SerializeToString()


def _rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Every node input/output named `old` is named `new` (graph outputs are left to the caller)."""
    for node in model.graph.node:
        node.output[:] = [new if n == old else n for n in node.output]
        node.input[:] = [new if n == old else n for n in node.input]


def _extend_output(
    onnx_bytes: bytes, output_name: str, inner: str, initializers: list[Any], nodes: list[Any]
) -> bytes:
    """The graph whose output `output_name` is now computed by `nodes` from the old output (renamed
    `inner`), the input and `initializers`; opset >= 9 (IsNaN, Where), checked."""
    model = onnx.load_model_from_string(onnx_bytes)
    outs = [o.name for o in model.graph.output]
    if output_name not in outs:
        raise ExportError(f"graph has no output {output_name!r} (outputs {outs})")
    _rename_tensor(model, output_name, inner)
    model.graph.initializer.extend(initializers)
    model.graph.node.extend(nodes)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < 9:
            imp.version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_linear_term(
    onnx_bytes: bytes,
    mean: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    *,
    output_name: str = OUTPUT_NAME,
) -> bytes:
    """The graph with `where(isnan(features), mean, features) @ coef + intercept` added to its output
    (a linear base the trees were boosted on); float32 like the rest of the graph."""
    trees, f32 = f"{output_name}_trees", np.float32
    initializers = [
        onnx.numpy_helper.from_array(np.asarray(mean, f32), "linear_mean"),
        onnx.numpy_helper.from_array(np.asarray(coef, f32), "linear_coef"),
        onnx.numpy_helper.from_array(np.asarray(intercept, f32), "linear_intercept"),
    ]
    nodes = [
        helper.make_node("IsNaN", [INPUT_NAME], ["linear_nan"], name="linear_isnan"),
        helper.make_node(
            "Where", ["linear_nan", "linear_mean", INPUT_NAME], ["linear_x"], name="linear_fill"
        ),
        helper.make_node("MatMul", ["linear_x", "linear_coef"], ["linear_xw"], name="linear_matmul"),
        helper.make_node("Add", ["linear_xw", "linear_intercept"], ["linear_out"], name="linear_bias"),
        helper.make_node("Add", [trees, "linear_out"], [output_name], name="linear_plus_trees"),
    ]
    return _extend_output(onnx_bytes, output_name, trees, initializers, nodes)


def scale_output_by_input(
    onnx_bytes: bytes, index: int, floor: float, *, output_name: str = OUTPUT_NAME
) -> bytes:
    """The graph with its output multiplied by max(features[:, index], floor) (a NaN feature gives the
    floor, as `LightGBMReturns._scale`): a model fitted on scaled targets answers in label units."""
    unscaled = f"{output_name}_unscaled"
    initializers = [
        onnx.numpy_helper.from_array(np.array([index], np.int64), "scale_index"),
        onnx.numpy_helper.from_array(np.array([floor], np.float32), "scale_floor"),
    ]
    nodes = [
        helper.make_node("Gather", [INPUT_NAME, "scale_index"], ["scale_col"], axis=1, name="scale_gather"),
        helper.make_node("IsNaN", ["scale_col"], ["scale_nan"], name="scale_isnan"),
        helper.make_node(
            "Where", ["scale_nan", "scale_floor", "scale_col"], ["scale_filled"], name="scale_fill"
        ),
        helper.make_node("Max", ["scale_filled", "scale_floor"], ["scale_s"], name="scale_max"),
        helper.make_node("Mul", [unscaled, "scale_s"], [output_name], name="scale_mul"),
    ]
    return _extend_output(onnx_bytes, output_name, unscaled, initializers, nodes)


def rename_output(onnx_bytes: bytes, old: str, new: str) -> bytes:
    """The graph with its output `old` (and every reference to it) named `new`; unchanged when equal.

    Model families export their prediction as `returns` (`pipelines.models.base.OUTPUT_NAME`); the task
    names it in the bundle (e.g. `log_variance`), so a family never needs to know the task.
    """
    if old == new:
        return onnx_bytes
    model = onnx.load_model_from_string(onnx_bytes)
    names = {o.name for o in model.graph.output}
    if old not in names or new in names:
        raise ExportError(f"cannot rename graph output {old!r} to {new!r}: graph outputs are {sorted(names)}")
    _rename_tensor(model, old, new)
    for o in model.graph.output:
        if o.name == old:
            o.name = new
    onnx.checker.check_model(model)
    return model.SerializeToString()


def optimise_bundle(
    onnx_bytes: bytes, variant: str, parity_rows: np.ndarray, tolerance: Any = None, **kwargs: Any
) -> bytes:
    """A sequence model's export variant ("fp32" | "optimized" | "int8" | "fp16") behind its decision
    gate; raises `VariantGateError` (a `ParityError`) saying by how much it moved predictions and
    decisions. See `pipelines.models.sequence.variants.optimise_bundle` (imported on call: importing this
    module stays torch-free).
    """
    from pipelines.models.sequence.variants import optimise_bundle as _optimise_bundle

    return _optimise_bundle(onnx_bytes, variant, parity_rows, tolerance, **kwargs)
