"""Promotion policy (pure) and alias moves (MLflow), each move recorded in the history.

Alias lifecycle:
- the first version of a model becomes `champion` (when its gates passed);
- every later version becomes `challenger` when registered (the A/B candidate);
- a promote decision moves `champion` to that version and *removes* `challenger` when it pointed
  at the same version — otherwise serving would split traffic between a model and itself. The old
  champion keeps no alias; it stays one `rollback` away through the history;
- a keep decision leaves the version as `challenger` (so an A/B run can still judge it) and the
  decision's reason is written on the version as tags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.config import PromotionPolicy
from registry.client import CHALLENGER, CHAMPION, RegisteredVersion, RegistryError, is_not_found
from registry.history import (
    AliasMove,
    current_aliases,
    history,
    record_move,
    require_actor,
    sync_external_moves,
)

__all__ = [
    "Decision",
    "apply_decision",
    "assign_new_version",
    "clear_alias",
    "current_aliases",
    "decide",
    "direction_accuracy",
    "promote",
    "rollback",
    "set_alias",
]


@dataclass(frozen=True)
class Decision:
    """Outcome of the promotion policy; `reason` states the numbers in one line."""

    promote: bool
    reason: str
    challenger_acc: float
    champion_acc: float | None
    n_rows: int
    lift_pp: float | None = None  # challenger − champion, percentage points
    baseline_acc: float | None = None
    failed_gates: tuple[str, ...] = field(default_factory=tuple)


def direction_accuracy(pred: np.ndarray, actual: np.ndarray) -> tuple[float, int]:
    """Share of rows where sign(pred) == sign(actual), for one horizon.

    Rows with actual == 0 (no move: neither call is right) or a non-finite actual (not realised
    yet) are excluded; a prediction of exactly 0 counts as wrong (no call made).

    Args:
        pred: predicted returns, shape (n,).
        actual: realised returns, shape (n,).

    Returns:
        (accuracy in [0, 1], rows counted); (nan, 0) when no row counts.
    """
    pred, actual = np.asarray(pred, dtype=float), np.asarray(actual, dtype=float)
    if pred.shape != actual.shape or pred.ndim != 1:
        raise ValueError(
            f"pred and actual must be 1-D of the same length, got {pred.shape} and {actual.shape}"
        )
    keep = np.isfinite(actual) & (actual != 0)
    if not np.all(np.isfinite(pred[keep])):
        raise ValueError(
            "pred has NaN/inf on rows with a realised return; fix the model output before comparing"
        )
    n = int(keep.sum())
    if n == 0:
        return float("nan"), 0
    return float(np.mean(np.sign(pred[keep]) == np.sign(actual[keep]))), n


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def decide(
    policy: PromotionPolicy,
    *,
    challenger_acc: float,
    champion_acc: float | None,
    n_rows: int,
    gates: dict[str, bool],
    baseline_acc: float | None = None,
) -> Decision:
    """Apply the promotion policy (pure; no MLflow).

    Promote when every gate passed (at least one gate must have been checked), the challenger
    beats the best naive baseline if `policy.require_beats_baselines`, and either there is no
    champion (first version) or, on at least `policy.min_samples` shared rows,
    challenger_acc − champion_acc ≥ `policy.min_lift_pp` / 100.

    Args:
        policy: from configs/promotion.yaml.
        challenger_acc: challenger direction accuracy at `policy.horizon`, in [0, 1].
        champion_acc: champion accuracy on the same rows; None when there is no champion.
        n_rows: rows both accuracies were computed on.
        gates: gate name → passed (e.g. {"parity": True, "validation": True}).
        baseline_acc: best naive baseline's accuracy on the same rows.
    """
    base = dict(
        challenger_acc=challenger_acc, champion_acc=champion_acc, n_rows=n_rows, baseline_acc=baseline_acc
    )
    failed = tuple(sorted(g for g, ok in gates.items() if not ok))
    if not gates:
        why = "no gate results given (expected at least 'parity'); refusing to promote an unchecked model"
        return Decision(False, why, **base)
    if failed:
        why = f"gate(s) failed: {', '.join(failed)}; not promoted"
        return Decision(False, why, failed_gates=failed, **base)
    if not math.isfinite(challenger_acc):
        why = f"challenger accuracy is {challenger_acc} (no comparable rows?); not promoted"
        return Decision(False, why, **base)
    rows = f"{n_rows:,} rows of the newest window"
    beats = ""
    if policy.require_beats_baselines:
        if baseline_acc is None:
            why = "policy requires beating the naive baselines but no baseline accuracy was given"
            return Decision(False, why, **base)
        if challenger_acc <= baseline_acc:
            return Decision(
                False,
                f"challenger {_pct(challenger_acc)} does not beat the best naive baseline "
                f"{_pct(baseline_acc)} on {rows}",
                **base,
            )
        beats = f"; beats best baseline {_pct(baseline_acc)}"
    if champion_acc is None:
        why = f"first version: no champion yet (challenger {_pct(challenger_acc)} on {rows}{beats})"
        return Decision(True, why, **base)
    if n_rows < policy.min_samples:
        return Decision(
            False,
            f"only {n_rows:,} comparable rows < min_samples {policy.min_samples:,}; "
            "champion kept until more rows exist",
            **base,
        )
    lift = 100 * (challenger_acc - champion_acc)
    # Tolerance: accuracies are ratios of counts; a lift equal to the threshold must not fail on rounding.
    ok = lift >= policy.min_lift_pp - 1e-9
    sign = "≥" if ok else "<"
    reason = (
        f"challenger {_pct(challenger_acc)} vs champion {_pct(champion_acc)} on {rows}: "
        f"{lift:+.2f} pp {sign} {policy.min_lift_pp:.2f} pp{beats}"
    )
    return Decision(ok, reason, lift_pp=lift, **base)


def _check_version(client: MlflowClient, name: str, version: str) -> None:
    try:
        client.get_model_version(name, str(version))
    except MlflowException as e:
        if is_not_found(e):
            raise RegistryError(
                f"{name} has no version {version}; list versions in the MLflow UI or `kairos history`"
            ) from None
        raise


def set_alias(
    client: MlflowClient, name: str, alias: str, version: str, *, reason: str, actor: str
) -> AliasMove:
    """Point `alias` of `name` at `version` and record the move.

    Moves made outside Kairos since the last record are synced first, so `from_version` is the
    true previous holder. Pointing an alias where it already points records nothing and returns
    a move with `record_id=None`.
    """
    version = str(version)
    require_actor(actor)
    _check_version(client, name, version)
    sync_external_moves(client, name)
    before = current_aliases(client, name).get(alias)
    if before == version:
        return AliasMove(name, alias, before, version, "already there", actor, datetime.now(UTC), None)
    client.set_registered_model_alias(name, alias, version)
    return record_move(client, name, alias, before, version, reason=reason, actor=actor)


def clear_alias(client: MlflowClient, name: str, alias: str, *, reason: str, actor: str) -> AliasMove | None:
    """Remove `alias` from `name` and record it; None when the alias was not set."""
    require_actor(actor)
    sync_external_moves(client, name)
    before = current_aliases(client, name).get(alias)
    if before is None:
        return None
    client.delete_registered_model_alias(name, alias)
    return record_move(client, name, alias, before, None, reason=reason, actor=actor)


def assign_new_version(
    client: MlflowClient, registered: RegisteredVersion, *, actor: str, gates_passed: bool = True
) -> AliasMove:
    """Alias a new version: `champion` if the model has none (and gates passed), else `challenger`."""
    name, version = registered.name, registered.version
    if CHAMPION not in current_aliases(client, name) and gates_passed:
        why = f"first version of {name}: no champion yet"
        return set_alias(client, name, CHAMPION, version, reason=why, actor=actor)
    why = f"new version from run {registered.run_id}, awaiting promotion decision"
    return set_alias(client, name, CHALLENGER, version, reason=why, actor=actor)


def promote(client: MlflowClient, name: str, version: str, *, reason: str, actor: str) -> list[AliasMove]:
    """Move `champion` to `version`; remove `challenger` if it pointed there. Returns the moves made."""
    version = str(version)
    moves = [set_alias(client, name, CHAMPION, version, reason=reason, actor=actor)]
    if current_aliases(client, name).get(CHALLENGER) == version:
        why = f"v{version} promoted to champion"
        cleared = clear_alias(client, name, CHALLENGER, reason=why, actor=actor)
        moves += [cleared] if cleared else []
    return [m for m in moves if m.record_id is not None]


def apply_decision(
    client: MlflowClient, registered: RegisteredVersion, decision: Decision, *, actor: str
) -> list[AliasMove]:
    """Carry out `decision` for `registered` and write it on the version as tags. Returns the moves made.

    Promote → `promote`; keep → the version stays (or becomes) `challenger`.
    """
    name, version = registered.name, str(registered.version)
    verdict = "promote" if decision.promote else "keep"
    client.set_model_version_tag(name, version, "promotion.decision", verdict)
    client.set_model_version_tag(name, version, "promotion.reason", decision.reason[:5000])
    if decision.promote:
        return promote(client, name, version, reason=decision.reason, actor=actor)
    if current_aliases(client, name).get(CHAMPION) == version:
        return []
    why = f"not promoted: {decision.reason}"
    move = set_alias(client, name, CHALLENGER, version, reason=why, actor=actor)
    return [move] if move.record_id else []


def rollback(client: MlflowClient, name: str, *, reason: str = "rollback", actor: str) -> AliasMove:
    """Put the previous champion back: the newest version in the champion history other than the current one.

    Two rollbacks in a row therefore swap back (like `cd -`); versions deleted from the registry
    are skipped.
    """
    sync_external_moves(client, name)
    current = current_aliases(client, name).get(CHAMPION)
    for move in reversed(history(client, name, CHAMPION)):
        for candidate in (move.to_version, move.from_version):
            if candidate is None or candidate == current:
                continue
            try:
                _check_version(client, name, candidate)
            except RegistryError:
                continue
            return set_alias(client, name, CHAMPION, candidate, reason=reason, actor=actor)
    raise RegistryError(
        f"{name} has no previous champion to roll back to (history holds only v{current or '-'})"
    )
