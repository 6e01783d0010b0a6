"""ONNX-vs-native parity checks for the validation suites.

The checks themselves live in `pipelines.training.parity` (training gates registration on them, and
`pipelines` never imports `validation`); the session builder and batch runner in
`pipelines.contracts.onnx`. This module re-exports them under their historical names.
"""

from __future__ import annotations

from pipelines.contracts.onnx import make_session, run_onnx
from pipelines.training.parity import check_parity

__all__ = ["check_parity", "make_session", "onnx_session", "run_onnx"]


def onnx_session(onnx_bytes: bytes, threads: int = 1):
    """A CPU onnxruntime session with an explicit thread count (`pipelines.contracts.onnx.make_session`)."""
    return make_session(onnx_bytes, threads=threads)
