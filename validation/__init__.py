"""Data validation: Great Expectations suites and parity checks.

- `validation.candles`: the candle suite (`validate_candles`, `check_or_quarantine`, `quarantine`,
  `find_gaps`, `CandleReport`).
- `validation.gx_context`: the quiet ephemeral GX context and `run_suite` (Checkpoint + Data Docs).
- `validation.parity`: ONNX vs native model parity.

Nothing is imported here: Great Expectations takes seconds to import and is loaded only when a
suite runs.
"""
