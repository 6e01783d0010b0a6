"""Errors that carry a user-facing, one-line message naming the problem and the fix."""


class KairosError(Exception):
    """Base class: the CLI prints `str(err)` on one line and exits non-zero (no traceback)."""


class SourceError(KairosError):
    """A source could not produce candles (missing file, corrupt CSV, exchange error)."""


class StoreError(KairosError):
    """The candle store refused an operation; the store is unchanged."""


class ValidationFailed(KairosError):
    """A batch failed the candle suite; it was quarantined and not written."""


class ConfigError(KairosError):
    """A config file or value is invalid."""


class StreamError(KairosError):
    """A streaming feature state got an out-of-order, duplicate or gapped candle."""


class ParityError(KairosError):
    """ONNX export disagrees with the native model beyond tolerance; registration is blocked."""
