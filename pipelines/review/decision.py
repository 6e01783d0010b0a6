"""The promotion policy as pure functions: training-time `decide` (newest window) and, for the A/B review,
`decide_review`. No MLflow: `registry.promotion` applies a decision to the aliases and records it.

The gates, the same for both:
(a) the challenger beats the champion: a paired one-sided test on the task's per-row loss over the same
    out-of-sample rows is significant at `policy.alpha` (newest window: Diebold-Mariano with a HAC
    variance, `pipelines.review.gates`; A/B review: the always-valid sequential test, which stays valid
    however many hourly reviews came before), AND the lift is at least the policy's minimum;
(b) with `policy.require_beats_baselines`, the challenger beats the task's best naive baseline on those
    same rows (and, for a newest window, in walk-forward at the policy horizon). This gate is a point
    estimate, with the paired test's p-value recorded beside it: the baselines are free and fixed, so the
    question is "is it below a free rule?", not "is it surely above it?"; demanding significance over
    the rule too would refuse a challenger that is surely better than the champion whenever both sit
    close to a rule, and (a) already guards against promoting noise;
(c) parity and data validation passed.
A first version (no champion) is judged by (b) and (c).

`decide` works on any task's promotion metric: `higher_is_better` says its direction, `min_lift` is in
the metric's own units (accuracy: `min_lift_pp` percentage points when `min_lift` is not set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import PromotionPolicy
from pipelines.review.gates import METHOD, PairedTest


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
    test: PairedTest | None = None  # gate (a): champion loss - challenger loss on the same rows
    baseline_test: PairedTest | None = None  # gate (b): best baseline loss - challenger loss
    baseline_name: str | None = None
    alpha: float | None = None

    @property
    def lift_pp(self) -> float | None:
        """The lift in percentage points (for share metrics such as accuracy)."""
        return None if self.lift is None else 100 * self.lift

    @property
    def p_value(self) -> float | None:
        """Gate (a)'s one-sided p-value (None for a first version)."""
        return None if self.test is None else self.test.p_value

    def record(self) -> dict[str, str | float]:
        """The decision's facts for the registry's decision history: str → params, float → metrics."""
        out: dict[str, str | float] = {
            "decision": "promote" if self.promote else "keep",
            "reason": self.reason,
            "metric": self.metric,
            "failed_gates": ",".join(self.failed_gates) or "none",
            "test": METHOD if self.test or self.baseline_test else "none",
            "baseline": self.baseline_name or "none",
            "challenger_score": self.challenger_score,
            "rows": float(self.n_rows),
        }
        for key in ("champion_score", "baseline_score", "lift", "alpha"):
            if getattr(self, key) is not None:
                out[key] = float(getattr(self, key))
        if self.test is not None:
            out.update(self.test.as_dict("test"))
            out["loss"] = self.test.loss
        if self.baseline_test is not None:
            out.update(self.baseline_test.as_dict("baseline_test"))
        return out


def _fmt(metric: str, x: float) -> str:
    return f"{100 * x:.2f}%" if metric == "accuracy" else f"{metric} {x:.5g}"


def _lift_text(metric: str, lift: float, need: float | None = None, higher_is_better: bool = True) -> str:
    if metric == "accuracy":
        return f"{100 * lift:+.2f} pp" + ("" if need is None else f" (min lift {100 * need:.2f} pp)")
    word = "higher" if higher_is_better else "lower"
    return f"{word} by {lift:+.5g}" + ("" if need is None else f" (min lift {need:.5g})")


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
    test: PairedTest | None = None,
    baseline_test: PairedTest | None = None,
    baseline_name: str | None = None,
) -> Decision:
    """Apply the promotion policy to a challenger's newest window (see the module doc for the gates).

    Promote when every gate passed (at least one gate must have been checked), the challenger beats the
    best naive baseline if `policy.require_beats_baselines`, and either there is no champion (first
    version) or, on at least `policy.min_samples` shared rows, the paired test says the challenger's loss
    is lower at `policy.alpha` and the point lift is at least `min_lift(policy, metric)`.

    Args:
        policy: from configs/promotion.yaml (+ the task's `promotion:` overrides).
        challenger_score: challenger's promotion metric at `policy.horizon`.
        champion_score: champion's on the same rows; None when there is no champion.
        n_rows: rows both scores were computed on.
        gates: gate name → passed (e.g. {"parity": True, "validation": True}).
        baseline_score: best naive baseline's score on the same rows.
        metric, higher_is_better: the task's promotion metric and its direction.
        below_baselines: horizon → reason where the challenger's pooled walk-forward score did not beat the
            task's best naive baseline (`TrainResult.below_baselines`); {} = beats them at every horizon;
            None = not recorded (a run logged before the verdict existed).
        test: gate (a)'s paired test, champion vs challenger on the same rows (`WindowComparison.test`);
            required when there is a champion: no promotion on a point estimate.
        baseline_test: the paired test against the best baseline (reported with gate b).
        baseline_name: which baseline is the best on these rows.

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
        test=test,
        baseline_test=baseline_test,
        baseline_name=baseline_name,
        alpha=policy.alpha,
    )

    def refuse(why: str, *failed: str, **extra: Any) -> Decision:
        return Decision(False, why, failed_gates=tuple(failed), **base, **extra)

    failed = tuple(sorted(g for g, ok in gates.items() if not ok))
    if not gates:
        return refuse(
            "no gate results given (expected at least 'parity'); refusing to promote an unchecked model",
            "gates",
        )
    if failed:
        return refuse(f"gate(s) failed: {', '.join(failed)}; not promoted", *failed)
    if not math.isfinite(challenger_score):
        return refuse(
            f"challenger {metric} is {challenger_score} (no comparable rows?); not promoted", "rows"
        )
    rows = f"{n_rows:,} rows of the newest window"
    beats = withheld = ""
    if policy.require_beats_baselines:
        if below_baselines is None:
            why = (
                "policy requires beating the naive baselines at every horizon, but this run recorded no "
                "walk-forward baseline verdict (logged by an older version); retrain it"
            )
            return refuse(why, "beats_baselines")
        if policy.horizon in below_baselines:
            why = (
                f"below the best naive rule in walk-forward at the policy horizon "
                f"({below_baselines[policy.horizon]}); not promoted"
            )
            return refuse(why, "beats_baselines")
        if below_baselines:
            hs = ", ".join(f"h{h}" for h in sorted(below_baselines))
            detail = "; ".join(below_baselines[h] for h in sorted(below_baselines))
            withheld = f"; {hs} withheld from serving (below the best naive rule in walk-forward: {detail})"
        if baseline_score is None:
            return refuse(
                "policy requires beating the naive baselines but no baseline score was given",
                "beats_baselines",
            )
        who = f" {baseline_name}" if baseline_name else ""
        vs = f" ({baseline_test.describe()})" if baseline_test is not None else ""
        if sign * (challenger_score - baseline_score) <= 0:
            return refuse(
                f"challenger {_fmt(metric, challenger_score)} does not beat the best naive "
                f"baseline{who} {_fmt(metric, baseline_score)} on {rows}{vs}; not promoted",
                "beats_baselines",
            )
        beats = f"; beats best baseline{who} {_fmt(metric, baseline_score)}{vs}{withheld}"
    if champion_score is None:
        why = f"first version: no champion yet (challenger {_fmt(metric, challenger_score)} on {rows}{beats})"
        return Decision(True, why, **base)
    if n_rows < policy.min_samples:
        return refuse(
            f"only {n_rows:,} comparable rows < min_samples {policy.min_samples:,}; "
            "champion kept until more rows exist",
            "min_samples",
        )
    lift = sign * (challenger_score - champion_score)
    need = min_lift(policy, metric)
    head = f"challenger {_fmt(metric, challenger_score)} vs champion {_fmt(metric, champion_score)} on {rows}"
    if test is None:
        return refuse(
            f"{head}: no paired test on the shared rows was given; not promoting on a point estimate",
            "significance",
            lift=lift,
        )
    if metric == "accuracy" and test.in_pp:  # the direction loss difference is the accuracy lift itself
        stats = f"{test.describe()}, min lift {100 * need:.2f} pp"
    else:
        stats = f"{_lift_text(metric, lift, need, higher_is_better)}; {test.describe()}"
    significant = test.p_value < policy.alpha  # NaN (too few rows) is not significant
    # Tolerance: scores are ratios of counts; a lift equal to the threshold must not fail on rounding.
    enough = lift >= need - 1e-9
    failed = tuple(g for g, ok in (("significance", significant), ("min_lift", enough)) if not ok)
    if failed:
        why = []
        if not significant:
            why.append(f"not significant at alpha {policy.alpha} (p={test.p_value:.2g})")
        if not enough:
            why.append(f"lift below the minimum {_lift_text(metric, need)}".replace("+", ""))
        return refuse(f"{head}: {stats}: {' and '.join(why)}; champion kept{beats}", *failed, lift=lift)
    return Decision(
        True,
        f"{head}: {stats}: significant at alpha {policy.alpha}, lift >= min{beats}",
        lift=lift,
        **base,
    )


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
    failed_gates: tuple[str, ...] = field(default_factory=tuple)
    baseline_name: str | None = None
    baseline_test: PairedTest | None = None  # best baseline loss - challenger loss on the challenger's rows
    ci: tuple[float, float] | None = None  # always-valid interval of `lift`

    @property
    def lift_pp(self) -> float | None:
        """Direction loss: the accuracy lift in percentage points."""
        return None if self.lift is None else 100 * self.lift

    def record(self) -> dict[str, str | float]:
        """The decision's facts for the registry's decision history: str → params, float → metrics."""
        out: dict[str, str | float] = {
            "decision": "promote" if self.promote else "keep",
            "reason": self.reason,
            "loss": self.loss,
            "verdict": self.verdict,
            "failed_gates": ",".join(self.failed_gates) or "none",
            "test": "always-valid sequential test (normal mixture, HAC variance)",
            "baseline": self.baseline_name or "none",
            "horizon": float(self.horizon),
            "rows": float(self.n),
        }
        if self.lift is not None:
            out["test.diff"] = float(self.lift)
        if self.p_value is not None:
            out["test.p_value"] = float(self.p_value)
        if self.ci is not None:
            out["test.ci_low"], out["test.ci_high"] = float(self.ci[0]), float(self.ci[1])
        if self.baseline_test is not None:
            out.update(self.baseline_test.as_dict("baseline_test"))
        return out


def decide_review(
    policy: PromotionPolicy,
    result: Any | None,
    *,
    loss: str = "direction",
    baseline: tuple[str, PairedTest] | None = None,
    baseline_note: str = "",
) -> ReviewDecision:
    """Apply the promotion policy to one A/B review.

    Promote only when, at `policy.horizon`, (1) each arm has >= `policy.min_samples` resolved rows,
    (2) the always-valid sequential test on the task's per-request loss says "challenger better" at
    level `policy.alpha` (valid however many hourly reviews came before), (3) the point estimate of
    the lift is >= the policy's minimum (`min_lift`, or `min_lift_pp` points for the direction loss), and
    (4) with `policy.require_beats_baselines`, the challenger's mean loss is below the best naive
    baseline's on its own resolved rows (point estimate; the paired test's p-value is reported).
    A significant lift below the minimum keeps the champion: the switch would not pay for itself.

    Args:
        policy: the promotion policy (+ the task's overrides).
        result: `compare_arms(..., alpha=policy.alpha, min_samples=policy.min_samples)` at
            `policy.horizon` (an `ABResult`), or None when there is nothing to compare.
        loss: the task's review loss name (`Task.review_loss`); the result must have been computed with it.
        baseline: (name, paired test) of the best naive baseline against the challenger on the reviewed
            rows (`pipelines.review.gates.review_baseline_losses` + `best_baseline_test`); None when none
            could be realised (then `baseline_note` says why).
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
    lo, hi = result.ci
    base = dict(
        horizon=h,
        verdict=result.verdict,
        lift=lift,
        p_value=p,
        n=n,
        loss=loss,
        baseline_name=baseline[0] if baseline else None,
        baseline_test=baseline[1] if baseline else None,
        ci=(float(lo), float(hi)),
    )
    level = f"{100 * (1 - policy.alpha):.0f}%"
    if loss == "direction":  # 1 - hit: the loss difference is the accuracy lift
        need, unit, scale = min_lift(policy, "accuracy"), " pp", 100.0
    else:
        need = policy.review_min_lift if policy.review_min_lift is not None else min_lift(policy, loss)
        unit, scale = "", 1.0
    fmt = (lambda x: f"{scale * x:+.2f}{unit}") if loss == "direction" else (lambda x: f"{x:+.4g}")
    stats = f"{loss} lift {fmt(lift)} (always-valid {level} CI {fmt(lo)}..{fmt(hi)}, p={p:.3g}, n={n:,})"
    beats = ""
    if policy.require_beats_baselines:
        if baseline is None:
            why = f" ({baseline_note})" if baseline_note else ""
            return ReviewDecision(
                False,
                f"policy requires beating the naive baselines, but none could be realised on the reviewed "
                f"rows{why}; champion kept: {stats}",
                failed_gates=("beats_baselines",),
                **base,
            )
        who, bt = baseline
        if not bt.diff > 0:
            return ReviewDecision(
                False,
                f"challenger does not beat the best naive baseline {who} on its reviewed rows "
                f"({bt.describe()}); champion kept: {stats}",
                failed_gates=("beats_baselines",),
                **base,
            )
        beats = f"; beats best baseline {who} ({bt.describe()})"
    if n < policy.min_samples:
        return ReviewDecision(
            False,
            f"only {n:,} resolved rows per arm < min_samples {policy.min_samples:,}; "
            f"champion kept, review again later{beats}",
            failed_gates=("min_samples",),
            **base,
        )
    if result.verdict != "challenger better":
        why = "champion is better" if result.verdict == "champion better" else "no significant difference yet"
        return ReviewDecision(
            False, f"{why} at h{h}: {stats}; champion kept{beats}", failed_gates=("significance",), **base
        )
    if lift < need - 1e-9:
        return ReviewDecision(
            False,
            f"challenger significantly better at h{h} but {stats} < min lift "
            f"{fmt(need).lstrip('+')}; champion kept{beats}",
            failed_gates=("min_lift",),
            **base,
        )
    return ReviewDecision(
        True,
        f"challenger better at h{h}: {stats} >= min lift {fmt(need).lstrip('+')} at alpha {policy.alpha}{beats}",
        **base,
    )
