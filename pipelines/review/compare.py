"""`compare_arms`: the one entry point the A/B review calls per horizon, and its `ABResult`.

The verdict comes from the always-valid sequential test (pipelines.review.sequential), so running the
review every hour never inflates the false-positive rate. The fixed-sample numbers (Welch + Cohen's
d, block-bootstrap CI for split traffic, Diebold-Mariano for shadow traffic) are reported beside
it for the humans reading the report; they are valid for one look only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipelines.review.arms import ABDataError, ArmData, ArmMetrics, arm_metrics, per_request_loss
from pipelines.review.fixed import (
    BootstrapCI,
    DMResult,
    WelchResult,
    block_bootstrap_diff_ci,
    diebold_mariano,
    welch_test,
)
from pipelines.review.sequential import METHOD, SequentialResult, sequential_paired, sequential_split

Verdict = Literal["challenger better", "champion better", "no difference yet"]
LossName = Literal["direction", "squared", "pnl"]


@dataclass(frozen=True)
class ABResult:
    """Everything one review knows about champion vs challenger at one horizon."""

    verdict: Verdict
    paired: bool
    loss: str  # which per-request loss the tests compare (lower is better)
    horizon: int
    alpha: float
    champion: ArmMetrics
    challenger: ArmMetrics
    accuracy_lift_pp: float  # challenger accuracy - champion accuracy, percentage points
    loss_diff: float  # mean loss(champion) - mean loss(challenger) at the last look; > 0 favours challenger
    sequential: SequentialResult  # per look (1-D arrays over looks)
    look_times: np.ndarray  # int64 epoch ms of each look; the last one is "now" (all rows)
    welch: WelchResult | None  # naive iid Welch on per-request losses, last look only
    bootstrap: BootstrapCI | None  # split traffic: block-bootstrap CI of loss_diff
    dm: DMResult | None  # shadow traffic: Diebold-Mariano on the paired loss differential
    method: str = METHOD

    @property
    def p_value(self) -> float:
        """Always-valid p-value after the last look."""
        return float(self.sequential.p_value[-1])

    @property
    def ci(self) -> tuple[float, float]:
        """(1 - alpha) confidence-sequence interval for loss_diff after the last look."""
        return float(self.sequential.ci_low[-1]), float(self.sequential.ci_high[-1])

    def summary(self) -> str:
        """The verdict in words, one sentence, for the report and the CLI."""
        lo, hi = self.ci
        n = int(self.sequential.n[-1])
        mode = "shadow (paired)" if self.paired else "split"
        return (
            f"{self.verdict} at horizon {self.horizon} ({mode}, n={n} per arm, loss={self.loss}): "
            f"accuracy lift {self.accuracy_lift_pp:+.2f} pp, loss difference {self.loss_diff:+.4g} "
            f"(always-valid {100 * (1 - self.alpha):.0f}% CI {lo:+.4g}..{hi:+.4g}, p={self.p_value:.3g})"
        )

    def metrics(self) -> dict[str, float]:
        """Flat float figures for MLflow `log_metrics` (nan where a number does not apply)."""
        nan = float("nan")
        out = {
            **self.champion.as_dict("champion."),
            **self.challenger.as_dict("challenger."),
            "accuracy_lift_pp": self.accuracy_lift_pp,
            "loss_diff": self.loss_diff,
            "seq.p_value": self.p_value,
            "seq.ci_low": self.ci[0],
            "seq.ci_high": self.ci[1],
            "seq.n": float(self.sequential.n[-1]),
            "seq.looks": float(self.sequential.n.size),
            "seq.first_rejection_look": float(self.sequential.first_rejection),
            "verdict_code": {"challenger better": 1.0, "champion better": -1.0}.get(self.verdict, 0.0),
            "welch.t": self.welch.t if self.welch else nan,
            "welch.p_value": self.welch.p_value if self.welch else nan,
            "welch.cohens_d": self.welch.cohens_d if self.welch else nan,
            "bootstrap.ci_low": self.bootstrap.low if self.bootstrap else nan,
            "bootstrap.ci_high": self.bootstrap.high if self.bootstrap else nan,
            "dm.stat_hln": self.dm.dm_hln if self.dm else nan,
            "dm.p_value": self.dm.p_value if self.dm else nan,
        }
        return {k: float(v) for k, v in out.items()}


def look_times(times: np.ndarray, looks: int | Sequence[int] | None) -> np.ndarray:
    """Cut-off times (epoch ms) of the looks; the last is always the newest row's time.

    Args:
        times: all request times of both arms, int64 epoch ms.
        looks: None (one look: now), an int k (k equally spaced looks over the experiment, what
            an hourly review would have seen), or the times of earlier reviews (epoch ms).
    """
    last = int(times.max())
    if looks is None:
        return np.array([last], dtype=np.int64)
    if isinstance(looks, (int, np.integer)):
        if looks < 1:
            raise ABDataError(f"looks must be >= 1, got {looks}")
        first = int(times.min())
        return np.unique(np.linspace(first, last, int(looks) + 1)[1:].astype(np.int64))
    past = np.asarray(sorted(int(t) for t in looks if int(t) < last), dtype=np.int64)
    return np.append(past, last)


def _check_pair(champion: ArmData, challenger: ArmData, paired: bool) -> None:
    if champion.horizon != challenger.horizon:
        raise ABDataError(
            f"arms have different horizons ({champion.horizon} vs {challenger.horizon}); compare one "
            "horizon at a time"
        )
    if min(len(champion), len(challenger)) < 2:
        raise ABDataError("each arm needs at least 2 rows with known outcomes; wait for more traffic")
    if paired and (
        len(champion) != len(challenger)
        or not np.array_equal(champion.time, challenger.time)
        or not np.array_equal(champion.realised, challenger.realised)
    ):
        raise ABDataError(
            "paired=True needs both arms on the same requests (equal time and realised arrays); "
            "use paired=False for split traffic or join the shadow log on request id first"
        )


def _verdict(seq: SequentialResult, min_samples: int) -> Verdict:
    if seq.n[-1] < min_samples:
        return "no difference yet"
    lo, hi = float(seq.ci_low[-1]), float(seq.ci_high[-1])
    if lo > hi:  # looks disagreed in sign (vanishingly rare): refuse to call it
        return "no difference yet"
    if lo > 0:
        return "challenger better"
    if hi < 0:
        return "champion better"
    return "no difference yet"


def compare_arms(
    champion: ArmData,
    challenger: ArmData,
    *,
    paired: bool,
    fee_bps: float,
    alpha: float = 0.05,
    looks: int | Sequence[int] | None = None,
    loss: LossName | Callable = "direction",
    loss_name: str | None = None,
    min_samples: int = 100,
    plan_n: int = 10_000,
    bootstrap_reps: int = 2000,
    seed: int = 0,
) -> ABResult:
    """Compare champion and challenger at one horizon and say which is better, and how sure.

    Args:
        champion: the serving model's outcome-joined predictions.
        challenger: the candidate's (same requests when paired).
        paired: True for shadow traffic (both arms predict every request), False for split.
        fee_bps: fee per unit turnover for the P&L (EvaluationConfig.fee_bps).
        alpha: family-wise level over all looks (PromotionPolicy.alpha).
        looks: the reviews so far (see `look_times`); the verdict is valid however many there are.
        loss: per-request loss compared: "direction" (0/1 miss; the promotion metric), "squared"
            or "pnl" (minus net P&L), or a task's `row_loss` (then name it with `loss_name`).
        min_samples: per-arm burn-in rows before any look is evaluated (PromotionPolicy.min_samples).
        plan_n: per-arm rows at which the sequential test is tuned to be most powerful.
        bootstrap_reps: block-bootstrap replications (split only).
        seed: bootstrap seed.

    Returns:
        ABResult with the verdict, per-arm metrics and all test figures.

    Raises:
        ABDataError: mismatched horizons, too few rows, or paired arms on different requests.
    """
    _check_pair(champion, challenger, paired)
    if not 0 < alpha < 1:
        raise ABDataError(f"alpha must be in (0, 1), got {alpha}")
    m_a = arm_metrics(champion, fee_bps=fee_bps, confidence=1 - alpha)
    m_b = arm_metrics(challenger, fee_bps=fee_bps, confidence=1 - alpha)
    name = loss_name or (loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"))
    la, keep_a = per_request_loss(champion, loss, fee_bps)
    lb, keep_b = per_request_loss(challenger, loss, fee_bps)
    ta, tb = champion.time[keep_a], challenger.time[keep_b]
    if min(la.size, lb.size) < 2:
        raise ABDataError(f"fewer than 2 rows with a usable {name!r} loss per arm; wait for more traffic")
    times = look_times(np.concatenate([ta, tb]), looks)
    ca = np.searchsorted(ta, times, side="right")
    cb = np.searchsorted(tb, times, side="right")
    h = champion.horizon
    dm = boot = None
    if paired:
        seq = sequential_paired(la - lb, ca, alpha=alpha, min_samples=min_samples, plan_n=plan_n, horizon=h)
        dm = diebold_mariano(la, lb, horizon=h)
    else:
        seq = sequential_split(la, lb, ca, cb, alpha=alpha, min_samples=min_samples, plan_n=plan_n, horizon=h)
        boot = block_bootstrap_diff_ci(la, lb, confidence=1 - alpha, reps=bootstrap_reps, seed=seed)
    return ABResult(
        verdict=_verdict(seq, min_samples),
        paired=paired,
        loss=name,
        horizon=h,
        alpha=alpha,
        champion=m_a,
        challenger=m_b,
        accuracy_lift_pp=100.0 * (m_b.accuracy - m_a.accuracy),
        loss_diff=float(la.mean() - lb.mean()),
        sequential=seq,
        look_times=times,
        welch=welch_test(la, lb),
        bootstrap=boot,
        dm=dm,
    )
