"""core18: core27 without its 9 price- and volume-level fields, i.e. the seed's scale-free features.

core27 (the `002_*` seed's 27) carries raw levels: open, high, low, close, volume, quote volume, the two
taker-buy volumes and the trade count. Their scale drifts between walk-forward folds (a price that
trends, a volume regime that changes), so a tree that splits on them in one fold learns a level the
next fold never sees. core18 drops them and keeps every scale-free feature: spread_bps,
taker_buy_ratio, the log returns, volatilities, SMA/EMA distances (divided by close), RSI, the volume
ratio to its SMA, the VWAP distance and the position in the candle's range. Nothing is recomputed:
the kernel is core27's, and the output keeps 18 of its rows, so core18 == core27[names] exactly.
"""

from __future__ import annotations

import numpy as np

from pipelines.features import core27
from pipelines.features._ewm import Ewm

NAME = "core18"
VERSION = 1
LEVELS = (
    "open", "high", "low", "close", "volume", "quote_asset_volume", "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume", "number_of_trades",
)  # fmt: skip
NAMES: tuple[str, ...] = tuple(n for n in core27.NAMES if n not in LEVELS)
_KEEP = np.array([core27.NAMES.index(n) for n in NAMES])
_KEEP_LIST = _KEEP.tolist()
INPUTS = core27.INPUTS
PAD_VALUES = core27.PAD_VALUES
LAGS = core27.LAGS
new_state = core27.new_state


def first_valid() -> np.ndarray:
    return core27.first_valid()[_KEEP]


def kernel(X: np.ndarray, lo: int, hi: int, t0: int, state: Ewm, out: np.ndarray) -> None:
    """core27's kernel into a scratch (27, hi-lo) block, then its scale-free rows into `out` (18, hi-lo);
    one streamed candle goes through core27's one-candle path, which writes the 18 rows directly."""
    if hi - lo == 1 and t0 > 0 and state.Y is not None and core27.ONE_CANDLE:
        return core27._kernel_one(X, lo, state, out, _KEEP_LIST)
    full = np.empty((len(core27.NAMES), hi - lo))
    core27.kernel(X, lo, hi, t0, state, full)
    out[...] = full[_KEEP]
