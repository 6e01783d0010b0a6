"""Optuna tuning, the pure part: search spaces, the inner walk-forward objective, best-params files.

Time correctness. `prepare_tuning_data` keeps the rows `kairos train` evaluates on (the newest
`walk_forward.window` labelled rows) and then cuts off the newest `test_size` rows plus the `purge`
rows before them: the final test window that training reports is never seen by tuning. Inside what
is left, a trial is scored on the newest `inner_folds` purged walk-forward folds (same train/test
sizes as training). Each fold's model is built through the family's `ModelSpec` at the tuned horizon
only and fitted by `pipelines.training.fit.fit_fold`, the fit path of walk-forward training: its
train range minus a purged validation slice, which early stopping and in-fold pruning look at.
Nothing here branches on the model family: the spec says how sampled params override its config,
which config field takes the thread count, and which pruning callbacks its `fit` takes.

Intermediate reports share one step axis (Optuna compares trials step by step), one block per fold:

    step = fold * STEPS_PER_FOLD + i    i = boosting iteration / epoch (the family's pruning callback)
    step = fold * STEPS_PER_FOLD + STEPS_PER_FOLD - 1    the fold's test score (`fold_step`)

so a trial is pruned either mid-fold (its validation curve trails the median at that iteration) or
after a fold (its fold score trails). Trials that finish return the mean fold score (maximised).

Workers, storage and MLflow live in `pipelines.tuning.study`, `registry.tuning` and `flows.tune`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from pipelines.config import (
    EvaluationConfig,
    ParamSpec,
    TrainingConfig,
    TuningConfig,
    WalkForwardConfig,
    _parse,
    _read_yaml,
)
from pipelines.contracts.errors import ConfigError, KairosError

STEPS_PER_FOLD = 100_000  # > any n_estimators / epoch count, so fold blocks never overlap
NO_SKILL = {"accuracy": 0.5, "ic": 0.0, "sharpe": 0.0}  # score of a forecast that says nothing (NaN metric)


class TuningError(KairosError):
    """Tuning cannot run as asked (too few rows, unknown horizon, a study made for another metric)."""


# ---------------------------------------------------------------- search spaces
def load_search_space(configs_dir: Path, model_type: str) -> TuningConfig:
    """Parse and check `configs/search_spaces/<model_type>.yaml`.

    Every parameter must be a tunable field of the model family's config (`ModelSpec.tunable_fields`),
    and both ends of its range (or every choice) must be values that config accepts, so a bad space
    fails here, naming the parameter, instead of in trial 37.

    Raises:
        ConfigError: missing file, bad YAML, or a bad parameter (named in the message).
    """
    path = configs_dir / "search_spaces" / f"{model_type}.yaml"
    if not path.exists():
        have = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no search space for model {model_type!r} at {path}; available: {have}")
    data = _read_yaml(path)
    data.setdefault("model_type", model_type)
    if data["model_type"] != model_type:
        raise ConfigError(f"{path}: model_type is {data['model_type']!r} but the file is for {model_type!r}")
    tuning = _parse(TuningConfig, data, path)
    from pipelines.models import get_spec

    model = get_spec(model_type, configs_dir)
    tunable = model.tunable_fields()
    for name, spec in tuning.params.items():
        if name not in tunable:
            raise ConfigError(
                f"{path}: params.{name}: not a tunable field of {model_type}; tunable: {tunable}"
            )
        for which, value in _probe_values(spec):
            err = _rejects(model, tuning, configs_dir, name, value)
            if err:
                raise ConfigError(
                    f"{path}: params.{name}: {which}={value!r} is not accepted ({err}); fix the range"
                )
    return tuning


def _probe_values(spec: ParamSpec) -> list[tuple[str, Any]]:
    if spec.type == "categorical":
        return [("choice", c) for c in spec.choices or ()]
    cast = int if spec.type == "int" else float
    return [("low", cast(spec.low)), ("high", cast(spec.high))]


def _rejects(model: Any, tuning: TuningConfig, configs_dir: Path, name: str, value: Any) -> str | None:
    """The model config's complaint about `name=value` (on the tuned preset), or None when it accepts it."""
    from pipelines.models import ModelContext

    try:
        model.config(ModelContext(TrainingConfig(), Path(configs_dir)), tuning.preset, {name: value})
    except ValidationError as e:
        return e.errors()[0]["msg"]
    except ConfigError as e:
        return str(e).rsplit(": ", 1)[-1]
    return None


def suggest(trial: Any, params: dict[str, ParamSpec]) -> dict[str, Any]:
    """Sample one value per parameter from an Optuna trial (names kept as in the config)."""
    out: dict[str, Any] = {}
    for name, s in params.items():
        if s.type == "categorical":
            out[name] = trial.suggest_categorical(name, list(s.choices or ()))
        elif s.type == "int":
            out[name] = trial.suggest_int(name, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        else:
            out[name] = trial.suggest_float(name, float(s.low), float(s.high), step=s.step, log=s.log)
    return out


def overrides_for(tuning: TuningConfig, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the best-params file stores: {<model_type>: {param: value}}, overrides of the family's config."""
    return {tuning.model_type: dict(params)}


def tuned_params(overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The flat config overrides of a best-params file (`load_best_params`), for `make_model(overrides=...)`.

    Files store one section: the model name, or "lightgbm" / "preset" as written before model specs.
    """
    return {k: v for section in overrides.values() for k, v in section.items()}


# ---------------------------------------------------------------- data and folds
@dataclass(frozen=True)
class TuningData:
    """The rows tuning may see: feature rows and labels, the final test window already cut off."""

    X: np.ndarray  # float32 (n, F), oldest first, past warm-up
    Y: np.ndarray  # float64 (n, H): the task's labels (returns: ln(close[t+h]/close[t]))
    horizons: tuple[int, ...]
    open_time_ms: np.ndarray  # int64 (n,)
    held_out_from_ms: int  # open time of the first row tuning never sees (purge + final test window)
    task: str = "returns"  # the task the labels belong to

    def save(self, path: Path) -> Path:
        """Write an .npz atomically (workers read it; a half-written file must never be visible)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                X=self.X,
                Y=self.Y,
                horizons=np.asarray(self.horizons, np.int64),
                task=np.asarray(self.task),
                open_time_ms=self.open_time_ms,
                held_out_from_ms=np.int64(self.held_out_from_ms),
            )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> TuningData:
        if not Path(path).exists():
            raise TuningError(
                f"tuning data file {path} is missing; run `kairos tune` (it writes it) or pass --data"
            )
        with np.load(path) as z:
            return cls(
                X=z["X"],
                Y=z["Y"],
                horizons=tuple(int(h) for h in z["horizons"]),
                open_time_ms=z["open_time_ms"],
                held_out_from_ms=int(z["held_out_from_ms"]),
                task=str(z["task"]) if "task" in z.files else "returns",
            )


def prepare_tuning_data(candles: Any, cfg: TrainingConfig, task: Any = None) -> TuningData:
    """Features and labels as `kairos train` builds them, minus the final purge + test window.

    Args:
        task: a `pipelines.tasks.Task` (default: returns at `cfg.labels.horizons`).

    Raises:
        TuningError: nothing is left once the final test window is cut off.
    """
    from pipelines.features import get_feature_set
    from pipelines.tasks import DEFAULT_TASK, get_task
    from pipelines.training.walk_forward import _prepare

    task = task or get_task(DEFAULT_TASK, cfg.labels.horizons)
    fs = get_feature_set(cfg.features.feature_set)
    if fs.fitted:  # its parameters would have to be refitted inside every inner fold: not done yet
        raise TuningError(
            f"feature set {fs.name!r} has parts fitted on training data ({', '.join(fs.fitted)}); "
            "tuning does not refit them per inner fold yet: tune with the unfitted sets, then train"
        )
    ds = _prepare(candles, cfg, fs, None, task)
    n = ds.end - ds.lo
    cut = n - cfg.walk_forward.test_size - cfg.walk_forward.purge
    if cut <= 0:
        raise TuningError(
            f"{n} labelled rows leave nothing to tune on after the final test window "
            f"({cfg.walk_forward.test_size}) and purge ({cfg.walk_forward.purge}); supply more candles"
        )
    ms = ds.open_time.astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    return TuningData(
        X=np.ascontiguousarray(ds.X[:cut]),
        Y=np.ascontiguousarray(ds.Y[:cut]),
        horizons=tuple(cfg.labels.horizons),
        open_time_ms=ms[:cut],
        held_out_from_ms=int(ms[cut]),
        task=task.name,
    )


def inner_folds(n_rows: int, wf: WalkForwardConfig, n_folds: int) -> list[Any]:
    """The newest `n_folds` purged walk-forward folds over the tuning rows (oldest first)."""
    from pipelines.training.splits import walk_forward_folds

    return walk_forward_folds(n_rows, wf.model_copy(update={"max_folds": n_folds}))


def fold_step(fold: int) -> int:
    """The Optuna step at which fold `fold`'s test score is reported."""
    return fold * STEPS_PER_FOLD + STEPS_PER_FOLD - 1


def for_task(tuning: TuningConfig, task: Any, horizon: int) -> TuningConfig:
    """The search space with the task's defaults filled in: metric = the task's first tuning metric, horizon =
    `horizon` (the promotion policy's), both checked against the task.

    Raises:
        ConfigError: a metric the task does not define, or a horizon it does not predict.
    """
    metric = tuning.metric or task.tuning_metrics[0]
    if metric not in task.tuning_metrics:
        raise ConfigError(
            f"search space {tuning.model_type}: metric {metric!r} is not a tuning metric of task "
            f"{task.name}; choose one of {list(task.tuning_metrics)} (higher is better)"
        )
    h = tuning.horizon or horizon
    if h not in task.horizons:
        raise ConfigError(
            f"search space {tuning.model_type}: horizon {h} is not a horizon of task {task.name} "
            f"{list(task.horizons)}"
        )
    return tuning.model_copy(update={"metric": metric, "horizon": h})


def score(
    metric: str,
    pred: np.ndarray,
    actual: np.ndarray,
    horizon: int,
    *,
    interval: str,
    ev: EvaluationConfig,
    task: Any = None,
) -> float:
    """One number to maximise: the task's tuning metric (returns: direction accuracy, Spearman IC or
    fee-aware Sharpe of sign(pred); volatility: -QLIKE, -MSE or MZ R²).

    A NaN metric (e.g. a constant forecast has no IC) scores as no skill (`NO_SKILL`; -inf for a loss).
    """
    if task is None:
        from pipelines.tasks import DEFAULT_TASK, get_task

        task = get_task(DEFAULT_TASK, (horizon,))
    pred, actual = np.asarray(pred, float).ravel(), np.asarray(actual, float).ravel()
    value = task.score(pred, actual, metric, horizon, interval=interval, cfg=ev)
    return NO_SKILL.get(metric, -1e30) if math.isnan(value) else float(value)


class _FoldTrial:
    """The part of an Optuna Trial the integration pruning callbacks use, with steps moved into
    fold `fold`'s block; `sign=-1` turns a loss (lower is better) into a maximised value."""

    def __init__(self, trial: Any, fold: int, sign: float = 1.0) -> None:
        self._trial, self._fold, self._sign = trial, fold, sign

    @property
    def study(self) -> Any:
        return self._trial.study

    def report(self, value: float, step: int) -> None:
        self._trial.report(
            self._sign * float(value), self._fold * STEPS_PER_FOLD + min(int(step), STEPS_PER_FOLD - 2)
        )

    def should_prune(self) -> bool:
        return self._trial.should_prune()


# ---------------------------------------------------------------- the objective
class Objective:
    """Mean inner-fold score of one parameter set; reports per fold (and inside folds) for pruning.

    Every family goes the same way: `ModelSpec.build` at the tuned horizon with the sampled params as
    config overrides (plus the thread count in the spec's `threads_field`), inputs as training feeds
    them (`training.fit.model_inputs`), `training.fit.fit_fold` with the spec's pruning callbacks.

    Args:
        data: the tuning rows (`prepare_tuning_data`).
        cfg: the training config (walk-forward sizes; LightGBM's defaults block).
        tuning: the search space and scoring settings.
        interval: candle interval (Sharpe annualisation).
        threads: model threads per trial (explicit: OpenMP defaults thrash shared cores).
        configs_dir: where presets live (default `get_settings().configs_dir`).
        objective: the training objective the task chooses ("l2", "huber", "quantile").
        task: the task the rows were labelled for (default: `data.task` at `data.horizons`).
    """

    def __init__(
        self,
        data: TuningData,
        cfg: TrainingConfig,
        tuning: TuningConfig,
        *,
        interval: str,
        threads: int,
        configs_dir: Path | None = None,
        objective: str = "l2",
        task: Any = None,
    ) -> None:
        from pipelines.models import ModelContext, get_spec
        from pipelines.tasks import get_task

        self.task = task or get_task(data.task, data.horizons)
        tuning = for_task(tuning, self.task, tuning.horizon or data.horizons[0])

        if tuning.horizon not in data.horizons:
            raise TuningError(
                f"tuning horizon {tuning.horizon} is not a label horizon {list(data.horizons)}; "
                "set `horizon` in the search space to one of them"
            )
        if configs_dir is None:
            from pipelines.contracts.settings import get_settings

            configs_dir = get_settings().configs_dir
        self.data, self.cfg, self.tuning = data, cfg, tuning
        self.interval, self.threads, self.configs_dir, self.objective = (
            interval,
            threads,
            Path(configs_dir),
            objective,
        )
        self.spec = get_spec(tuning.model_type, self.configs_dir)
        self.spec.check_objective(objective)
        self.context = ModelContext(cfg, self.configs_dir)
        self.col = data.horizons.index(tuning.horizon)
        self.folds = inner_folds(len(data.Y), cfg.walk_forward, tuning.inner_folds)

    def __call__(self, trial: Any) -> float:
        import optuna

        params = suggest(trial, self.tuning.params)
        scores: list[float] = []
        for fold in self.folds:
            pred, actual = self.fit_predict(params, fold, trial)
            scores.append(self._score(pred, actual))
            trial.set_user_attr("fold_scores", scores)
            trial.report(scores[-1], fold_step(fold.index))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold.index}: score {scores[-1]:.5f}")
        return float(np.mean(scores))

    def _score(self, pred: np.ndarray, actual: np.ndarray) -> float:
        return score(
            self.tuning.metric,
            pred,
            actual,
            self.tuning.horizon,
            interval=self.interval,
            ev=self.cfg.evaluation,
            task=self.task,
        )

    def model(self, params: dict[str, Any]) -> Any:
        """An unfitted model of the tuned family with `params`, predicting the tuned horizon only."""
        threads = {self.spec.threads_field: self.threads} if self.spec.threads_field else {}
        return self.spec.build(
            self.context,
            self.data.X.shape[1],
            [self.tuning.horizon],
            preset=self.tuning.preset,
            overrides={**params, **threads},
            objective=self.objective,
        )

    def fit_predict(
        self, params: dict[str, Any], fold: Any, trial: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fit on `fold`'s train range (the training fit path) and return (pred, actual) (n,) on its test range.

        With a `trial` and `in_fold_pruning`, the family's pruning callbacks report inside the fold.
        """
        from pipelines.models import PruningRequest
        from pipelines.training.fit import fit_fold, model_inputs

        model = self.model(params)
        X, off = model_inputs(self.data.X, model)  # input k belongs to tuning row k + off
        Y = self.data.Y[off:, [self.col]]
        callbacks = None
        if trial is not None and self.tuning.in_fold_pruning and self.spec.pruning is not None:
            callbacks = self.spec.pruning(
                PruningRequest(
                    trial=_FoldTrial(trial, fold.index),
                    loss_trial=_FoldTrial(trial, fold.index, -1.0),
                    metric=self.tuning.metric,
                    score=self._score,
                    report_interval=self.tuning.report_interval,
                )
            )
        fit_fold(
            model,
            X,
            Y,
            max(0, fold.train_start - off),
            fold.train_end - off,
            self.cfg.walk_forward.purge,
            callbacks,
        )
        test = slice(fold.test_start - off, fold.test_end - off)
        return np.asarray(model.predict(X[test]), dtype=np.float64)[:, 0], Y[test, 0]


# ---------------------------------------------------------------- best parameters on disk
def study_key(model_type: str, symbol: str, interval: str, task: str = "returns") -> str:
    """`<model>-<SYMBOL>-<interval>` for the default task (the name before tasks existed, so existing studies
    and tuned files keep working), `<task>-<model>-<SYMBOL>-<interval>` for the others."""
    from pipelines.tasks import DEFAULT_TASK

    base = f"{model_type}-{symbol}-{interval}"
    return base if task == DEFAULT_TASK else f"{task}-{base}"


def best_params_path(home: Path, model_type: str, symbol: str, interval: str, task: str = "returns") -> Path:
    """`$KAIROS_HOME/tuned/<study_key>.yaml`."""
    return Path(home) / "tuned" / f"{study_key(model_type, symbol, interval, task)}.yaml"


def redact_storage(url: str) -> str:
    """A storage URL without its password (it goes into files, MLflow tags and logs)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def write_best_params(
    home: Path,
    model_type: str,
    symbol: str,
    interval: str,
    overrides: dict[str, dict[str, Any]],
    provenance: dict[str, Any],
    task: str = "returns",
) -> Path:
    """Write the tuned overrides + provenance where `kairos train` looks (atomic replace)."""
    path = best_params_path(home, model_type, symbol, interval, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "model_type": model_type,
        "task": task,
        "symbol": symbol,
        "interval": interval,
        "overrides": overrides,
        "provenance": {**provenance, "storage": redact_storage(str(provenance.get("storage", "")))},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
    return path


def load_best_params(
    home: Path, model_type: str, symbol: str, interval: str, task: str = "returns"
) -> tuple[dict, dict] | None:
    """(config overrides, provenance) written by `kairos tune`, or None when never tuned.

    Overrides are {<model_type>: {param: value}} (older files: {"lightgbm": ...} or {"preset": ...});
    `tuned_params(overrides)` flattens them for `make_model(..., overrides=...)`.

    Raises:
        ConfigError: the file exists but is not a tuned-parameters file.
    """
    path = best_params_path(home, model_type, symbol, interval, task)
    if not path.exists():
        return None
    doc = _read_yaml(path)
    overrides, prov = doc.get("overrides"), doc.get("provenance")
    if (
        not isinstance(overrides, dict)
        or not isinstance(prov, dict)
        or not all(isinstance(v, dict) for v in overrides.values())
    ):
        raise ConfigError(
            f"{path}: not a tuned-parameters file (needs `overrides` and `provenance` mappings); "
            "delete it or re-run kairos tune"
        )
    return overrides, prov


def provenance_tags(provenance: dict[str, Any]) -> dict[str, str]:
    """MLflow tags for a training run whose parameters came from a study."""
    return {f"kairos.tuned.{k}": str(v) for k, v in provenance.items()}


def provenance_of(study: Any, trial: Any, storage: str, tuning: TuningConfig) -> dict[str, Any]:
    """Where the best parameters came from: study, storage (no password), trial, value, metric, time."""
    return {
        "study_name": study.study_name,
        "storage": redact_storage(storage),
        "trial_number": trial.number,
        "value": float(trial.value),
        "metric": tuning.metric,
        "horizon": tuning.horizon,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
