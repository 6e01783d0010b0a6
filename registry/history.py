"""Alias history: every move of `champion`/`challenger` recorded in the MLflow tracking store.

Storage choice: one MLflow *run* per move, in the experiment `kairos-alias-history`, with the
move's facts as run *params* (`model, alias, from_version, to_version, reason, actor, time_utc`)
and the run's `start_time` as the move time. Why runs and not registered-model tags:
- it lives in the tracking store itself, so it scales with it (SQLite → PostgreSQL) and is backed
  up with it; no side file;
- params are immutable once logged — an audit log that cannot be edited in place; tags can;
- it is queryable server-side (`params.model = '...'`, ordered by start time, paginated), and a
  person can browse it in the MLflow UI as an ordinary experiment;
- registered-model tags would grow one key per move on the model entity, with per-value size
  limits and no ordering or paging.
A missing version is stored as the string "none" (params cannot be empty).

Moves made outside Kairos (a person moving `champion` in the MLflow UI) leave no record; they are
detected by `sync_external_moves`, which compares the live aliases with the last recorded moves.

Crash safety: an alias move and its record are two writes. Kairos writes the move's intent first (a
registered-model tag `kairos.pending_move.<alias>`, `begin_move`), then moves the alias, records the move
and drops the tag (`end_move`). A process killed between the move and the record leaves the tag, so the
next `sync_external_moves` records that move with its own reason, actor and time instead of calling it a
move "outside Kairos"; a tag whose move never happened is dropped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus
from mlflow.exceptions import MlflowException

from registry.client import CHAMPION, RegistryError, ensure_experiment, is_not_found

HISTORY_EXPERIMENT = "kairos-alias-history"
EXTERNAL_REASON = "moved outside Kairos"
PENDING_TAG = "kairos.pending_move."  # + alias: the move being made (registered-model tag, JSON)
_NONE = "none"
_MAX_REASON = 1000  # chars; params hold up to 6000, keep the run page readable


@dataclass(frozen=True)
class AliasMove:
    """One alias move. `from_version`/`to_version` are None when the alias was absent / removed."""

    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    reason: str
    actor: str
    time: datetime  # UTC, millisecond precision
    record_id: str | None = None  # id of the history run; None when not recorded

    def describe(self) -> str:
        frm, to = self.from_version or "-", self.to_version or "-"
        when = f"{self.time:%Y-%m-%d %H:%M:%S} UTC"
        return f"{when} {self.model}@{self.alias}: v{frm} → v{to} by {self.actor}: {self.reason}"


@dataclass(frozen=True)
class ServedInterval:
    """A version's time holding `champion`: [start, end); end None = still serving."""

    version: str
    start: datetime
    end: datetime | None
    reason: str
    actor: str


def current_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Live aliases of registered model `name` → version (as str); raises RegistryError if unknown."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if is_not_found(e):
            raise RegistryError(
                f"registered model {name!r} does not exist; train and register it first"
            ) from None
        raise
    # MLflow 3 returns versions as int here but as str elsewhere; normalise to str.
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def require_actor(actor: str) -> None:
    """Every move names who or what made it; checked before anything moves."""
    if not actor or not actor.strip():
        raise RegistryError(
            "an alias move needs an actor (who or what moved it), e.g. 'retrain-flow' or a user name"
        )


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _enc(version: str | None) -> str:
    return _NONE if version is None else str(version)


def _dec(value: str | None) -> str | None:
    return None if value in (None, "", _NONE) else value


def _history_experiment_id(client: MlflowClient) -> str:
    return ensure_experiment(client, HISTORY_EXPERIMENT)


def _search(client: MlflowClient, name: str, *, newest_first: bool, limit: int | None = None) -> list:
    if "'" in name:
        raise RegistryError(f"model name {name!r} contains a quote; use model_name() to build names")
    exp_id = _history_experiment_id(client)
    order = "DESC" if newest_first else "ASC"
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp_id],
            filter_string=f"params.model = '{name}'",
            order_by=[f"attributes.start_time {order}"],
            max_results=min(limit or 1000, 1000),
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token or (limit is not None and len(runs) >= limit):
            return runs[:limit] if limit is not None else runs


def _to_move(run) -> AliasMove:
    p = run.data.params
    return AliasMove(
        model=p["model"],
        alias=p["alias"],
        from_version=_dec(p.get("from_version")),
        to_version=_dec(p.get("to_version")),
        reason=p.get("reason", ""),
        actor=p.get("actor", ""),
        time=_from_ms(run.info.start_time),
        record_id=run.info.run_id,
    )


def record_move(
    client: MlflowClient,
    name: str,
    alias: str,
    from_version: str | None,
    to_version: str | None,
    *,
    reason: str,
    actor: str,
    at_ms: int | None = None,
) -> AliasMove:
    """Append one move to the history (the alias itself must already have been moved); `at_ms`: when it
    moved (epoch ms), default now."""
    require_actor(actor)
    exp_id = _history_experiment_id(client)
    now_ms = int(time.time() * 1000) if at_ms is None else int(at_ms)
    last = _search(client, name, newest_first=True, limit=1)
    if last:
        # Strictly increasing per model so that "oldest first" is a total order even for moves
        # made within the same millisecond (promote = move champion + clear challenger).
        now_ms = max(now_ms, last[0].info.start_time + 1)
    reason = (reason or "").strip()[:_MAX_REASON] or "(no reason given)"
    frm, to = _enc(from_version), _enc(to_version)
    run = client.create_run(
        exp_id,
        start_time=now_ms,
        run_name=f"{name}@{alias} v{frm}→v{to}",
        tags={"kairos.kind": "alias-move", "kairos.model": name},
    )
    when = _from_ms(now_ms)
    params = {
        "model": name,
        "alias": alias,
        "from_version": frm,
        "to_version": to,
        "reason": reason,
        "actor": actor,
        "time_utc": when.isoformat(timespec="milliseconds"),
    }
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=now_ms)
    return AliasMove(name, alias, from_version, to_version, reason, actor, when, run.info.run_id)


def history(client: MlflowClient, name: str, alias: str | None = None) -> list[AliasMove]:
    """Recorded moves of model `name` (optionally of one alias), oldest first."""
    moves = [_to_move(r) for r in _search(client, name, newest_first=False)]
    return [m for m in moves if alias is None or m.alias == alias]


def last_recorded(moves: list[AliasMove]) -> dict[str, str | None]:
    """alias → the version the newest recorded move left it at (None = removed)."""
    state: dict[str, str | None] = {}
    for m in moves:
        state[m.alias] = m.to_version
    return state


def begin_move(
    client: MlflowClient,
    name: str,
    alias: str,
    from_version: str | None,
    to_version: str | None,
    *,
    reason: str,
    actor: str,
) -> None:
    """Write the intent of a move before making it (see the module docstring: crash safety)."""
    intent = {"from": from_version, "to": to_version, "reason": reason[:_MAX_REASON], "actor": actor}
    intent["ms"] = int(time.time() * 1000)
    client.set_registered_model_tag(name, PENDING_TAG + alias, json.dumps(intent))


def end_move(client: MlflowClient, name: str, alias: str) -> None:
    """Drop the intent written by `begin_move` once the move is recorded."""
    try:
        client.delete_registered_model_tag(name, PENDING_TAG + alias)
    except MlflowException as e:
        if not is_not_found(e) and e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _pending(client: MlflowClient, name: str) -> dict[str, dict]:
    tags = client.get_registered_model(name).tags or {}
    out = {}
    for key, value in tags.items():
        if key.startswith(PENDING_TAG):
            try:
                out[key.removeprefix(PENDING_TAG)] = json.loads(value)
            except json.JSONDecodeError:
                out[key.removeprefix(PENDING_TAG)] = {}
    return out


def sync_external_moves(client: MlflowClient, name: str, actor: str = "mlflow-ui") -> list[AliasMove]:
    """Record alias moves made outside Kairos (e.g. in the MLflow UI) since the last recorded move, and
    moves of a Kairos process killed before it recorded them (their pending intent, `begin_move`).

    Returns:
        The moves recorded now (empty when the live aliases match the history).
    """
    live = current_aliases(client, name)
    recorded = last_recorded(history(client, name))
    pending = _pending(client, name)
    new: list[AliasMove] = []
    for alias in sorted(set(live) | set(recorded)):
        was, now = recorded.get(alias), live.get(alias)
        if was != now:
            intent = pending.get(alias, {})
            if intent.get("from") == was and intent.get("to") == now and intent.get("actor"):
                why = f"{intent.get('reason', '')} (recorded after the mover was interrupted)"
                move = record_move(
                    client, name, alias, was, now, reason=why, actor=intent["actor"], at_ms=intent.get("ms")
                )
            else:
                move = record_move(client, name, alias, was, now, reason=EXTERNAL_REASON, actor=actor)
            new.append(move)
    for alias in pending:  # recorded now, or a move that never happened: either way no longer pending
        end_move(client, name, alias)
    return new


def served_intervals(client: MlflowClient, name: str, alias: str = CHAMPION) -> list[ServedInterval]:
    """Which version held `alias` from when to when, oldest first (from the recorded history).

    Call `sync_external_moves` first to include moves made in the MLflow UI.
    """
    out: list[ServedInterval] = []
    for move in history(client, name, alias):
        if out and out[-1].end is None:
            prev = out[-1]
            out[-1] = ServedInterval(prev.version, prev.start, move.time, prev.reason, prev.actor)
        if move.to_version is not None:
            out.append(ServedInterval(move.to_version, move.time, None, move.reason, move.actor))
    return out
