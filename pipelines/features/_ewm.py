"""Blockwise exponential recursions: the one EMA/RSI implementation, for batch and streaming alike.

K parallel recursions y[t] = a_k * y[t-1] + (1 - a_k) * x[t] (pandas `ewm(alpha=1-a, adjust=False)`)
are unrolled inside blocks of L rows (blocks counted from the recursion's first row):

    c[i] = c[i-1] + (1-a) * a^-i * x[i]          (c[-1] = 0; a running sum, added strictly in order)
    y[i] = a^i * c[i] + a^(i+1) * Y               (Y = y just before the block)

Batch evaluates all rows with `np.add.accumulate` (sequential per lane) and elementwise products; streaming
evaluates one row with the same products and the same single add per row. Every y therefore comes
from the same float operations in the same order whatever the chunking, so streaming == batch holds
bit for bit (the tests check it). Only the Y chain across blocks is a Python loop: N/L iterations.

Accuracy: all terms of c are products of non-negative inputs (prices, gains, losses), so the
relative error of y is a few ulps (no cancellation); a^-(L-1) stays far from overflow for a >= 2/3.
"""

from __future__ import annotations

import numpy as np

BLOCK = 128  # rows per block: bigger = fewer Python iterations in batch, wider a^-i range


class Ewm:
    """State and evaluation of K parallel recursions y[t] = a*y[t-1] + (1-a)*x[t].

    Args:
        alpha: (K,) smoothing factors in (0, 1]; a = 1 - alpha.
        block: rows per block (see the module docstring).
    """

    def __init__(self, alpha: np.ndarray, block: int = BLOCK):
        alpha = np.asarray(alpha, dtype=np.float64)
        if alpha.ndim != 1 or not ((alpha > 0) & (alpha <= 1)).all():
            raise ValueError(f"alpha must be a 1-D array of values in (0, 1], got {alpha}")
        a = 1.0 - alpha
        i = np.arange(block + 1, dtype=np.float64)[:, None]  # (L+1, 1)
        self.L = block
        self.P = a[None, :] ** i  # (L+1, K): a^i
        self.Q = alpha[None, :] * a[None, :] ** -i[:-1]  # (L, K): (1-a) a^-i
        self.K = alpha.size
        self._Pl = self.P.tolist()  # the same numbers as Python floats, for `step`
        self._Ql = self.Q.tolist()
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next row starts a new recursion (it needs a seed)."""
        self.phase = 0  # rows consumed in the current block, 0..L-1
        self.c: np.ndarray | list[float] = np.zeros(self.K)  # (K,) running sum of the current block
        self.Y: np.ndarray | None = None  # (K,) y before the current block; None = not seeded
        self.PY: np.ndarray | None = None  # (L+1, K) a^i * Y: the block's constant term, cached
        self._Yl: list[float] = []  # Y as Python floats, for `step`

    @property
    def seeded(self) -> bool:
        return self.Y is not None

    def seed(self, y_before: np.ndarray) -> None:
        """Start the recursion: `y_before` (K,) plays y[-1], the value before the first row."""
        self.reset()
        self._set_Y(np.array(y_before, dtype=np.float64).reshape(self.K))

    def _set_Y(self, Y: np.ndarray) -> None:
        self.Y = Y
        self.PY = self.P * Y  # the same products every path would form: caching keeps bits
        self._Yl = Y.tolist()

    def copy(self) -> Ewm:
        new = object.__new__(Ewm)
        new.__dict__.update(self.__dict__)
        new.c = self.c.copy()
        return new  # Y and PY are replaced, never written in place

    def step(self, x: list[float]) -> list[float]:
        """Advance one row of K inputs given as Python floats; returns y as K Python floats.

        The streaming case of `__call__` without arrays: c + (1-a) a^-i x, then a^i c + a^(i+1) Y, the
        same IEEE products and adds on the same numbers (a^(i+1) Y is the product PY caches), so the
        same bits, ~10x cheaper than 1-element array operations. The row that ends a block starts the
        next one as `__call__` does (Y = that row's y, c = 0). The state is shared: either may follow
        the other.
        """
        if self.Y is None:
            raise ValueError("Ewm used before seed(); seed it with the value before the first row")
        ph = self.phase
        c = self.c
        if type(c) is not list:
            c = c.tolist()
        cs = [ci + qi * xi for ci, qi, xi in zip(c, self._Ql[ph], x)]
        y = [pi * ci + pj * yi for pi, ci, pj, yi in zip(self._Pl[ph], cs, self._Pl[ph + 1], self._Yl)]
        if ph == self.L - 1:  # the block ends: y is the next block's Y
            self._set_Y(np.array(y))
            self.c, self.phase = [0.0] * self.K, 0
        else:
            self.c, self.phase = cs, ph + 1
        return y

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Advance over rows `x` (K, M) (channels x rows); returns y (K, M), keeps the state."""
        if self.Y is None:
            raise ValueError("Ewm used before seed(); seed it with the value before the first row")
        K, M = x.shape
        if M == 1:  # the streaming case: one add per lane, as accumulate would do, on Python floats
            return np.array(self.step(x[:, 0].tolist()))[:, None]
        L, P, Q = self.L, self.P, self.Q
        ph = self.phase
        if type(self.c) is list:  # left by `step`
            self.c = np.array(self.c)
        x = x.T  # (M, K) view: rows first for the cumulative sums
        y = np.empty((M, K))
        h = min(M, L - ph)  # head: rows that finish the current block
        cs = np.add.accumulate(np.concatenate([self.c[None], Q[ph : ph + h] * x[:h]]), axis=0)[1:]  # (h, K)
        y[:h] = P[ph : ph + h] * cs + self.PY[ph + 1 : ph + h + 1]
        ph += h
        if ph == L:
            self._set_Y(y[h - 1].copy())
            self.c, ph = np.zeros(K), 0
        else:
            self.c = cs[-1].copy()
        nb = (M - h) // L  # middle: whole blocks, vectorised
        if nb:
            cs = np.add.accumulate(Q[None] * x[h : h + nb * L].reshape(nb, L, K), axis=1)  # (nb, L, K)
            Ys = np.empty((nb, K))
            Yk = self.Y
            for b in range(nb):  # y at the end of block b = the next block's Y, same ops as below
                Ys[b] = Yk
                Yk = P[L - 1] * cs[b, L - 1] + P[L] * Yk
            y[h : h + nb * L] = (P[None, :L] * cs + P[None, 1:] * Ys[:, None, :]).reshape(nb * L, K)
            self._set_Y(Yk)
        r = M - h - nb * L  # tail: a new block, not finished
        if r:
            cs = np.add.accumulate(Q[:r] * x[M - r :], axis=0)  # (r, K)
            y[M - r :] = P[:r] * cs + self.PY[1 : r + 1]
            self.c, ph = cs[-1].copy(), r
        self.phase = ph
        return y.T
