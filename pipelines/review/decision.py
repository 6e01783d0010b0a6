"""The promotion policy as pure functions: training-time `decide` (newest window) and, for the A/B
review, `decide_review` (in `pipelines.review.review_decision`). No MLflow: `registry.promotion` applies
a decision to the aliases.

`decide` works on any task's promotion metric: `higher_is_better` says its direction, `min_lift` is in
the metric's own units (accuracy: `min_lift_pp` percentage points when `min_lift` is not set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import PromotionPolicy


@dataclass(frozen=True)
class Decision:
    """Outcome of the promotion policy; `reason` states the numbers in one line."""

    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    n_rows: int
    metric: str = "accuracy"
    higher_is_better: bool = True
    lift: float | None = None  # challenger better than champion by this much, in metric units (> 0 = better)
    baseline_score: float | None = None
    failed_gates: tuple[str, ...] = field(default_factory=tuple)

    @property
    def lift_pp(self) -> float | None:
        """The lift in percentage points (for share metrics such as accuracy)."""
        return None if self.lift is None else 100 * self.lift


def _fmt(metric: str, x: float) -> str:
    return f"{100 * x:.2f}%" if metric == "accuracy" else f"{metric} {x:.5g}"


def min_lift(policy: PromotionPolicy, metric: str) -> float:
    """The policy's threshold in the metric's units."""
    if policy.min_lift is not None:
        return float(policy.min_lift)
    return policy.min_lift_pp / 100.0


def decide(
    policy: PromotionPolicy,
    *,
    challenger_score: float,
    champion_score: float | None,
    n_rows: int,
    gates: dict[str, bool],
    baseline_score: float | None = None,
    metric: str = "accuracy",
    higher_is_better: bool = True,
    below_baselines: dict[int, str] | None = None,
) -> Decision:
    """Apply the promotion policy.

    Promote when every gate passed (at least one gate must have been checked), the challenger
    beats the best naive baseline if `policy.require_beats_baselines`, and either there is no
    champion (first version) or, on at least `policy.min_samples` shared rows, the challenger is
    better than the champion by at least `min_lift(policy, metric)`.

    Args:
        policy: from configs/promotion.yaml (+ the task's `promotion:` overrides).
        challenger_score: challenger's promotion metric at `policy.horizon`.
        champion_score: champion's on the same rows; None when there is no champion.
        n_rows: rows both scores were computed on.
        gates: gate name → passed (e.g. {"parity": True, "validation": True}).
        baseline_score: best naive baseline's score on the same rows.
        metric, higher_is_better: the task's promotion metric and its direction.
        below_baselines: horizon → reason where the challenger's pooled walk-forward score did not beat
            the task's best naive baseline (`TrainResult.below_baselines`); {} = beats them at every
            horizon; None = not recorded (a run logged before the verdict existed).

    With `policy.require_beats_baselines`, a challenger is refused when it is below the best naive rule
    at `policy.horizon` in walk-forward, or on the newest window. Its other horizons that are below the
    rule in walk-forward are not promoted either: serving withholds them (`runtime.withhold_below_
    baselines`), and the reason names them.
    """
    sign = 1.0 if higher_is_better else -1.0
    base = dict(
        challenger_score=challenger_score,
        champion_score=champion_score,
        n_rows=n_rows,
        baseline_score=baseline_score,
        metric=metric,
        higher_is_better=higher_is_better,
    )
    failed = tuple(sorted(g for g, ok in gates.items() if not ok))
    if not gates:
        why = "no gate results given (expected at least 'parity'); refusing to promote an unchecked model"
        return Decision(False, why, **base)
    if failed:
        return Decision(
            False, f"gate(s) failed: {', '.join(failed)}; not promoted", failed_gates=failed, **base
        )
    if not math.isfinite(challenger_score):
        return Decision(
            False, f"challenger {metric} is {challenger_score} (no comparable rows?); not promoted", **base
        )
    rows = f"{n_rows:,} rows of the newest window"
    beats = withheld = ""
    if policy.require_beats_baselines:
        if below_baselines is None:
            why = (
                "policy requires beating the naive baselines at every horizon, but this run recorded no "
                "walk-forward baseline verdict (logged by an older version); retrain it"
            )
            return Decision(False, why, **base)
        if policy.horizon in below_baselines:
            why = (
                f"below the best naive rule in walk-forward at the policy horizon "
                f"({below_baselines[policy.horizon]}); not promoted"
            )
            return Decision(False, why, failed_gates=("beats_baselines",), **base)
        if below_baselines:
            hs = ", ".join(f"h{h}" for h in sorted(below_baselines))
            detail = "; ".join(below_baselines[h] for h in sorted(below_baselines))
            withheld = f"; {hs} withheld from serving (below the best naive rule in walk-forward: {detail})"
        if baseline_score is None:
            why = "policy requires beating the naive baselines but no baseline score was given"
            return Decision(False, why, **base)
        if sign * (challenger_score - baseline_score) <= 0:
            return Decision(
                False,
                f"challenger {_fmt(metric, challenger_score)} does not beat the best naive "
                f"baseline {_fmt(metric, baseline_score)} on {rows}",
                **base,
            )
        beats = f"; beats best baseline {_fmt(metric, baseline_score)}{withheld}"
    if champion_score is None:
        why = f"first version: no champion yet (challenger {_fmt(metric, challenger_score)} on {rows}{beats})"
        return Decision(True, why, **base)
    if n_rows < policy.min_samples:
        return Decision(
            False,
            f"only {n_rows:,} comparable rows < min_samples {policy.min_samples:,}; "
            "champion kept until more rows exist",
            **base,
        )
    lift = sign * (challenger_score - champion_score)
    need = min_lift(policy, metric)
    # Tolerance: scores are ratios of counts; a lift equal to the threshold must not fail on rounding.
    ok = lift >= need - 1e-9
    cmp = "≥" if ok else "<"
    if metric == "accuracy":
        margin = f"{100 * lift:+.2f} pp {cmp} {100 * need:.2f} pp"
    else:
        margin = f"{'lower' if not higher_is_better else 'higher'} by {lift:+.5g} {cmp} {need:.5g}"
    reason = (
        f"challenger {_fmt(metric, challenger_score)} vs champion {_fmt(metric, champion_score)} "
        f"on {rows}: {margin}{beats}"
    )
    return Decision(ok, reason, lift=lift, **base)


@dataclass(frozen=True)
class ReviewDecision:
    """What the policy makes of one A/B review; `reason` states the numbers in one line."""

    promote: bool
    reason: str
    horizon: int
    verdict: str  # ABResult.verdict at `horizon`, or "no experiment"
    lift: (
        float | None
    )  # mean loss(champion) - mean loss(challenger), the task's loss units (> 0 favours challenger)
    p_value: float | None  # always-valid p-value
    n: int  # rows per arm with a known outcome at `horizon`
    loss: str = "direction"

    @property
    def lift_pp(self) -> float | None:
        """Direction loss: the accuracy lift in percentage points."""
        return None if self.lift is None else 100 * self.lift


def decide_review(policy: PromotionPolicy, result: Any | None, *, loss: str = "direction") -> ReviewDecision:
    """Apply the promotion policy to one A/B review.

    Promote only when, at `policy.horizon`, (1) each arm has >= `policy.min_samples` resolved rows,
    (2) the always-valid sequential test on the task's per-request loss says "challenger better" at
    level `policy.alpha` (valid however many hourly reviews came before), and (3) the point estimate of
    the lift is >= the policy's minimum (`min_lift`, or `min_lift_pp` points for the direction loss).
    A significant lift below the minimum keeps the champion: the switch would not pay for itself.

    Args:
        policy: the promotion policy (+ the task's overrides).
        result: `compare_arms(..., alpha=policy.alpha, min_samples=policy.min_samples)` at
            `policy.horizon` (an `ABResult`), or None when there is nothing to compare.
        loss: the task's review loss name (`Task.review_loss`); the result must have been computed with it.
    """
    h = policy.horizon
    if result is None:
        return ReviewDecision(
            False,
            f"no champion/challenger outcomes at horizon {h} yet; nothing to decide",
            h,
            "no experiment",
            None,
            None,
            0,
            loss,
        )
    if result.horizon != h:
        raise ValueError(
            f"decide_review got the horizon-{result.horizon} result; the policy decides at horizon {h}"
        )
    if result.loss != loss:
        raise ValueError(
            f"the task compares the {loss!r} loss; the review was computed with loss={result.loss!r}"
        )
    n = int(result.sequential.n[-1])
    lift, p = float(result.loss_diff), float(result.p_value)
    base = dict(horizon=h, verdict=result.verdict, lift=lift, p_value=p, n=n, loss=loss)
    lo, hi = result.ci
    level = f"{100 * (1 - policy.alpha):.0f}%"
    if loss == "direction":  # 1 - hit: the loss difference is the accuracy lift
        need, unit, scale = min_lift(policy, "accuracy"), " pp", 100.0
    else:
        need = policy.review_min_lift if policy.review_min_lift is not None else min_lift(policy, loss)
        unit, scale = "", 1.0
    fmt = (lambda x: f"{scale * x:+.2f}{unit}") if loss == "direction" else (lambda x: f"{x:+.4g}")
    stats = f"{loss} lift {fmt(lift)} (always-valid {level} CI {fmt(lo)}..{fmt(hi)}, p={p:.3g}, n={n:,})"
    if n < policy.min_samples:
        return ReviewDecision(
            False,
            f"only {n:,} resolved rows per arm < min_samples {policy.min_samples:,}; "
            "champion kept, review again later",
            **base,
        )
    if result.verdict != "challenger better":
        why = "champion is better" if result.verdict == "champion better" else "no significant difference yet"
        return ReviewDecision(False, f"{why} at h{h}: {stats}; champion kept", **base)
    if lift < need - 1e-9:
        return ReviewDecision(
            False,
            f"challenger significantly better at h{h} but {stats} < min lift "
            f"{fmt(need).lstrip('+')}; champion kept",
            **base,
        )
    return ReviewDecision(
        True,
        f"challenger better at h{h}: {stats} >= min lift {fmt(need).lstrip('+')} at alpha {policy.alpha}",
        **base,
    )
