"""The one onnxruntime session builder, and the batched runner built on it.

Training (parity checks, newest-window predictions), the sequence models' export checks and serving
all open their sessions here, so thread counts and providers are set in one place. Serving passes
its latency-tuned `SessionOptions` (`serving.runtime.session_options`); everyone else gets explicit
thread counts (no oversubscription on a shared box).
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
import onnxruntime as ort

CPU = ("CPUExecutionProvider",)


def make_session(
    model: bytes | str | PathLike,
    *,
    threads: int = 1,
    providers: Sequence[Any] = CPU,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session for `model` (serialised ONNX bytes or a path to a .onnx file).

    Args:
        model: the graph, as bytes or a file path.
        threads: intra-op threads (inter-op is 1); ignored when `options` is given.
        providers: execution providers in order of preference; an entry may be a name or a
            (name, provider options) pair, as onnxruntime accepts.
        options: ready-made SessionOptions (serving's tuned ones); None = the thread settings above.
    """
    if options is None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))


def run_onnx(
    onnx_bytes: bytes | ort.InferenceSession,
    X: np.ndarray,
    *,
    output: str | None = None,
    batch_size: int = 4096,
    threads: int = 1,
) -> np.ndarray:
    """One output of the graph for X (float32 [N, F] or [N, T, F]) as float64, run in batches.

    Args:
        onnx_bytes: the serialised graph (or an open session, reused as is).
        X: input rows; cast to contiguous float32.
        output: the output to return; None = the graph's first output (e.g. "returns", "log_variance").
        batch_size: rows per session run (bounds peak memory).
        threads: intra-op threads of the session built here.

    Returns:
        float64 [N, ...] (e.g. [N, H]); N = 0 gives an empty array of the output's trailing shape.
    """
    sess = (
        onnx_bytes
        if isinstance(onnx_bytes, ort.InferenceSession)
        else make_session(onnx_bytes, threads=threads)
    )
    input_name = sess.get_inputs()[0].name
    out_meta = sess.get_outputs()
    names = [o.name for o in out_meta]
    name = names[0] if output is None else output
    if name not in names:
        raise ValueError(f"the ONNX graph has no output {name!r}; its outputs are {names}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    outs = [
        sess.run([name], {input_name: X[i : i + batch_size]})[0] for i in range(0, X.shape[0], batch_size)
    ]
    if not outs:
        tail = [d if isinstance(d, int) else 0 for d in out_meta[names.index(name)].shape[1:]]
        return np.empty((0, *tail), dtype=np.float64)
    return np.concatenate(outs, axis=0).astype(np.float64)
