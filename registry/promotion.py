"""Promotion policy (pure) and alias moves (MLflow), each move recorded in the history.

Alias lifecycle:
- the first version of a model becomes `champion` (when its gates passed);
- every later version becomes `challenger` when registered (the A/B candidate);
- a promote decision moves `champion` to that version and *removes* `challenger` when it pointed
  at the same version — otherwise serving would split traffic between a model and itself. The old
  champion keeps no alias; it stays one `rollback` away through the history;
- a keep decision leaves the version as `challenger` (so an A/B run can still judge it);
- every decision, promoted or not, is recorded with its numbers (`registry.decisions`): on the version
  as `promotion.*` tags and as a run of `kairos-promotion-decisions`, which `kairos history` prints.
Crash safety: no alias ever points at a version whose bundle is incomplete (`require_complete_bundle`),
and every move writes its intent before it is made (`registry.history.begin_move`), so a move whose
process was killed before recording it is recorded later with its own reason and actor.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.contracts.bundle import MANIFEST_FILE, MODEL_FILE
from pipelines.contracts.faults import checkpoint
from registry.client import CHALLENGER, CHAMPION, RegisteredVersion, RegistryError, is_not_found
from registry.decisions import record
from registry.history import (
    AliasMove,
    begin_move,
    current_aliases,
    end_move,
    history,
    record_move,
    require_actor,
    sync_external_moves,
)

if TYPE_CHECKING:  # the policy is applied in pipelines.review.decision; registry only moves aliases
    from pipelines.review.decision import Decision

__all__ = [
    "apply_decision",
    "assign_new_version",
    "clear_alias",
    "current_aliases",
    "promote",
    "require_complete_bundle",
    "rollback",
    "set_alias",
]


def _check_version(client: MlflowClient, name: str, version: str):
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if is_not_found(e):
            raise RegistryError(
                f"{name} has no version {version}; list versions in the MLflow UI or `kairos history`"
            ) from None
        raise


def require_complete_bundle(client: MlflowClient, mv) -> None:
    """Refuse a version whose stored bundle lacks model.onnx or manifest.json (or holds an empty one).

    Kairos creates a version only after its whole bundle is stored, but a version can also be registered
    by hand (MLflow UI) from the bundle folder of a run killed mid-upload; no alias may point at that.
    Versions whose source is not a folder of their run are left to `download_bundle`'s `read_bundle` check.
    """
    if not mv.run_id:
        return
    root = client.get_run(mv.run_id).info.artifact_uri.rstrip("/")
    source = str(mv.source or "").rstrip("/")
    if not source.startswith(root + "/"):
        return
    sizes = {
        Path(f.path).name: f.file_size or 0 for f in client.list_artifacts(mv.run_id, source[len(root) + 1 :])
    }
    missing = [f for f in (MODEL_FILE, MANIFEST_FILE) if not sizes.get(f)]
    if missing:
        raise RegistryError(
            f"{mv.name} v{mv.version}: its bundle lacks {', '.join(missing)} (an interrupted upload?); "
            "not aliased. Register a complete bundle (kairos train) instead"
        )


def set_alias(
    client: MlflowClient, name: str, alias: str, version: str, *, reason: str, actor: str
) -> AliasMove:
    """Point `alias` of `name` at `version` and record the move.

    Moves made outside Kairos since the last record are synced first, so `from_version` is the
    true previous holder. Pointing an alias where it already points records nothing and returns
    a move with `record_id=None`. A version whose bundle is incomplete is refused (RegistryError).
    """
    return _set_alias(client, name, alias, version, reason=reason, actor=actor)


def _set_alias(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str,
    *,
    reason: str,
    actor: str,
    fault_point: str | None = None,
) -> AliasMove:
    version = str(version)
    require_actor(actor)
    require_complete_bundle(client, _check_version(client, name, version))
    sync_external_moves(client, name)
    before = current_aliases(client, name).get(alias)
    if before == version:
        return AliasMove(name, alias, before, version, "already there", actor, datetime.now(UTC), None)
    begin_move(client, name, alias, before, version, reason=reason, actor=actor)  # intent first
    client.set_registered_model_alias(name, alias, version)
    if fault_point:
        checkpoint(fault_point)  # crash tests only (pipelines.contracts.faults); a no-op otherwise
    move = record_move(client, name, alias, before, version, reason=reason, actor=actor)
    end_move(client, name, alias)
    return move


def clear_alias(client: MlflowClient, name: str, alias: str, *, reason: str, actor: str) -> AliasMove | None:
    """Remove `alias` from `name` and record it; None when the alias was not set."""
    require_actor(actor)
    sync_external_moves(client, name)
    before = current_aliases(client, name).get(alias)
    if before is None:
        return None
    begin_move(client, name, alias, before, None, reason=reason, actor=actor)
    client.delete_registered_model_alias(name, alias)
    move = record_move(client, name, alias, before, None, reason=reason, actor=actor)
    end_move(client, name, alias)
    return move


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
    moves = [
        _set_alias(client, name, CHAMPION, version, reason=reason, actor=actor, fault_point="during-promote")
    ]
    if current_aliases(client, name).get(CHALLENGER) == version:
        why = f"v{version} promoted to champion"
        cleared = clear_alias(client, name, CHALLENGER, reason=why, actor=actor)
        moves += [cleared] if cleared else []
    return [m for m in moves if m.record_id is not None]


def apply_decision(
    client: MlflowClient,
    registered: RegisteredVersion,
    decision: Decision,
    *,
    actor: str,
    source: str = "daily",
) -> list[AliasMove]:
    """Carry out `decision` for `registered` and record it with its numbers (the version's `promotion.*`
    tags and a run of `kairos-promotion-decisions`, `registry.decisions`), promoted or not. Returns the
    moves made.

    Promote → `promote`; keep → the version stays (or becomes) `challenger`.
    """
    name, version = registered.name, str(registered.version)
    champion = current_aliases(client, name).get(CHAMPION)
    record(
        client,
        name,
        version,
        decision.record(),
        source=source,
        champion_version=None if champion == version else champion,
        actor=actor,
    )
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
