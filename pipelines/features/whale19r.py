"""whale19r: whale19 made scale-free, for models pooled over many symbols (the whale task).

whale19 (the `000_*` seed's vector) carries raw levels: price, SMA/EMA/VWAP, MACD, volumes, bid/ask.
Across symbols they differ by orders of magnitude (a BTC-quoted coin trades at 1e-7 BTC, another at
1e-3), so a model pooled over a universe of symbols cannot read them. whale19r keeps every whale19
quantity that is already a ratio and turns each level into one relative to the close:

    sma_20_dist   sma_20 / price - 1        ema_20_dist   ema_20 / price - 1
    vwap_20_dist  vwap_20 / price - 1       macd_rel      macd_12_26 / price

and drops what has no scale-free form inside the seed's vector (price, base_volume, volume_sma_20,
spread, bid_price, ask_price; volume_ratio_20 and relative_spread keep their information). Nothing is
recomputed: the kernel is whale19's, so streaming equals batch exactly as there.
"""

from __future__ import annotations

import numpy as np

from pipelines.features import whale19

NAME = "whale19r"
VERSION = 1
NAMES: tuple[str, ...] = (
    "sma_20_dist", "ema_20_dist", "rsi_14w", "bollinger_position_20", "macd_rel", "vwap_20_dist",
    "volume_ratio_20", "relative_spread", "price_change_1m", "price_change_5m", "volatility_20",
    "skewness_20", "kurtosis_20",
)  # fmt: skip
NULLABLE: tuple[str, ...] = ("relative_spread",)
_W = {n: i for i, n in enumerate(whale19.NAMES)}
# whale19 row of each output, and whether it is divided by price (ratio - 1 for the *_dist levels)
_SRC = np.array([_W[n] for n in ("sma_20", "ema_20", "rsi_14w", "bollinger_position_20", "macd_12_26",
                                 "vwap_20", "volume_ratio_20", "relative_spread", "price_change_1m",
                                 "price_change_5m", "volatility_20", "skewness_20", "kurtosis_20")])  # fmt: skip
_DIST = np.array([0, 1, 5])  # sma, ema, vwap: level / price - 1
_REL = 4  # macd / price
INPUTS = whale19.INPUTS
OPTIONAL = whale19.OPTIONAL
PAD_VALUES = whale19.PAD_VALUES
LAGS = whale19.LAGS
new_state = whale19.new_state


def first_valid() -> np.ndarray:
    return whale19.first_valid()[_SRC]


def kernel(X: np.ndarray, lo: int, hi: int, t0: int, state: object, out: np.ndarray) -> None:
    """whale19's kernel into a scratch (19, hi-lo) block, then the scale-free rows into `out` (13, hi-lo)."""
    full = np.empty((len(whale19.NAMES), hi - lo))
    whale19.kernel(X, lo, hi, t0, state, full)
    out[...] = full[_SRC]
    price = full[_W["price"]]
    out[_DIST] = out[_DIST] / price - 1.0
    out[_REL] = out[_REL] / price
