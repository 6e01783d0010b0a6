"""Optuna tuning, the pure part: search spaces, the inner walk-forward objective, best-params files.

Time correctness. `prepare_tuning_data` keeps the rows `kairos train` evaluates on (the newest
`walk_forward.window` labelled rows) and then cuts off the newest `test_size` rows plus the `purge`
rows before them: the final test window that training reports is never seen by tuning. Inside what
is left, a trial is scored on the newest `inner_folds` purged walk-forward folds (same train/test
sizes as training); each fold's model fits on its train range minus a purged validation slice
(`splits.validation_split`), which only the in-fold pruning callback looks at.

Intermediate reports share one step axis (Optuna compares trials step by step), one block per fold:

    step = fold * STEPS_PER_FOLD + i    i = boosting iteration (LightGBM callback, validation slice)
    step = fold * STEPS_PER_FOLD + STEPS_PER_FOLD - 1    the fold's test score (`fold_step`)

so a trial is pruned either mid-fold (its validation curve trails the median at that iteration) or
after a fold (its fold score trails). Trials that finish return the mean fold score (maximised).

Workers, storage and MLflow live in `pipelines.tuning.study`, `registry.tuning` and `flows.tune`.
"""

from __future__ import annotations

import inspect
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
    LightGBMConfig,
    ParamSpec,
    SequenceModelConfig,
    TrainingConfig,
    TuningConfig,
    WalkForwardConfig,
    _parse,
    _read_yaml,
    load_model_preset,
)
from pipelines.contracts.errors import ConfigError, KairosError

STEPS_PER_FOLD = 100_000  # > any n_estimators / epoch count, so fold blocks never overlap
NO_SKILL = {"accuracy": 0.5, "ic": 0.0, "sharpe": 0.0}  # score of a forecast that says nothing (NaN metric)
_UNTUNABLE = {"num_threads", "seed", "architecture", "opset", "parity_tolerance", "mixed_precision"}


class TuningError(KairosError):
    """Tuning cannot run as asked (too few rows, unknown horizon, a study made for another metric)."""


# ---------------------------------------------------------------- search spaces
def load_search_space(configs_dir: Path, model_type: str) -> TuningConfig:
    """Parse and check `configs/search_spaces/<model_type>.yaml`.

    Every parameter must be a tunable field of the model's config, and both ends of its range (or
    every choice) must be values that config accepts, so a bad space fails here, naming the parameter,
    instead of in trial 37.

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
    if tuning.section == "lightgbm" and model_type != "lightgbm":
        raise ConfigError(f"{path}: section 'lightgbm' tunes the LightGBM block; use section 'preset' for {model_type}")
    fields = LightGBMConfig.model_fields if tuning.section == "lightgbm" else SequenceModelConfig.model_fields
    for name, spec in tuning.params.items():
        if name not in fields or name in _UNTUNABLE:
            tunable = sorted(set(fields) - _UNTUNABLE)
            raise ConfigError(f"{path}: params.{name}: not a tunable field of {model_type}; tunable: {tunable}")
        for which, value in _probe_values(spec):
            err = _rejects(tuning, configs_dir, name, value)
            if err:
                raise ConfigError(f"{path}: params.{name}: {which}={value!r} is not accepted ({err}); fix the range")
    return tuning


def _probe_values(spec: ParamSpec) -> list[tuple[str, Any]]:
    if spec.type == "categorical":
        return [("choice", c) for c in spec.choices or ()]
    cast = int if spec.type == "int" else float
    return [("low", cast(spec.low)), ("high", cast(spec.high))]


def _rejects(tuning: TuningConfig, configs_dir: Path, name: str, value: Any) -> str | None:
    """The model config's complaint about `name=value`, or None when it accepts it."""
    try:
        if tuning.section == "lightgbm":
            LightGBMConfig.model_validate({name: value})
        else:
            load_model_preset(configs_dir, tuning.model_type, tuning.preset, {name: value})
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
    """Config overrides for a parameter set: {"lightgbm": {...}} or {"preset": {...}} (see the report)."""
    return {tuning.section: dict(params)}


# ---------------------------------------------------------------- data and folds
@dataclass(frozen=True)
class TuningData:
    """The rows tuning may see: feature rows and labels, the final test window already cut off."""

    X: np.ndarray  # float32 (n, F), oldest first, past warm-up
    Y: np.ndarray  # float64 (n, H) log returns ln(close[t+h]/close[t])
    horizons: tuple[int, ...]
    open_time_ms: np.ndarray  # int64 (n,)
    held_out_from_ms: int  # open time of the first row tuning never sees (purge + final test window)

    def save(self, path: Path) -> Path:
        """Write an .npz atomically (workers read it; a half-written file must never be visible)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, X=self.X, Y=self.Y, horizons=np.asarray(self.horizons, np.int64),
                     open_time_ms=self.open_time_ms, held_out_from_ms=np.int64(self.held_out_from_ms))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> "TuningData":
        if not Path(path).exists():
            raise TuningError(f"tuning data file {path} is missing; run `kairos tune` (it writes it) or pass --data")
        with np.load(path) as z:
            return cls(X=z["X"], Y=z["Y"], horizons=tuple(int(h) for h in z["horizons"]),
                       open_time_ms=z["open_time_ms"], held_out_from_ms=int(z["held_out_from_ms"]))


def prepare_tuning_data(candles: Any, cfg: TrainingConfig) -> TuningData:
    """Features and labels as `kairos train` builds them, minus the final purge + test window.

    Raises:
        TuningError: nothing is left once the final test window is cut off.
    """
    from pipelines.features import get_feature_set
    from pipelines.training.walk_forward import _prepare

    ds = _prepare(candles, cfg, get_feature_set(cfg.features.feature_set), None)
    n = ds.end - ds.lo
    cut = n - cfg.walk_forward.test_size - cfg.walk_forward.purge
    if cut <= 0:
        raise TuningError(
            f"{n} labelled rows leave nothing to tune on after the final test window "
            f"({cfg.walk_forward.test_size}) and purge ({cfg.walk_forward.purge}); supply more candles"
        )
    ms = ds.open_time.astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    return TuningData(X=np.ascontiguousarray(ds.X[:cut]), Y=np.ascontiguousarray(ds.Y[:cut]),
                      horizons=tuple(cfg.labels.horizons), open_time_ms=ms[:cut], held_out_from_ms=int(ms[cut]))


def inner_folds(n_rows: int, wf: WalkForwardConfig, n_folds: int) -> list[Any]:
    """The newest `n_folds` purged walk-forward folds over the tuning rows (oldest first)."""
    from pipelines.training.splits import walk_forward_folds

    return walk_forward_folds(n_rows, wf.model_copy(update={"max_folds": n_folds}))


def fold_step(fold: int) -> int:
    """The Optuna step at which fold `fold`'s test score is reported."""
    return fold * STEPS_PER_FOLD + STEPS_PER_FOLD - 1


def score(metric: str, pred: np.ndarray, actual: np.ndarray, horizon: int, *, interval: str,
          ev: EvaluationConfig) -> float:
    """One number to maximise: direction accuracy, Spearman IC or fee-aware Sharpe of sign(pred).

    A NaN metric (constant forecast: no IC, no Sharpe) scores as no skill (`NO_SKILL`).
    """
    from pipelines.training.evaluation import direction_accuracy, periods_per_year, sign_pnl, spearman_ic

    pred, actual = np.asarray(pred, float).ravel(), np.asarray(actual, float).ravel()
    if metric == "accuracy":
        value = direction_accuracy(pred, actual)["accuracy"]
    elif metric == "ic":
        value = spearman_ic(pred, actual)
    elif metric == "sharpe":
        value = sign_pnl(pred, actual, horizon, fee_bps=ev.fee_bps,
                         periods_per_year=periods_per_year(interval, horizon))["pnl_sharpe"]
    else:
        raise ConfigError(f"unknown tuning metric {metric!r}; expected accuracy, ic or sharpe")
    return NO_SKILL[metric] if math.isnan(value) else float(value)


class _FoldTrial:
    """The part of an Optuna Trial the integration pruning callbacks use, with steps moved into
    fold `fold`'s block; `sign=-1` turns a loss (lower is better) into a maximised value."""

    def __init__(self, trial: Any, fold: int, sign: float = 1.0) -> None:
        self._trial, self._fold, self._sign = trial, fold, sign

    @property
    def study(self) -> Any:
        return self._trial.study

    def report(self, value: float, step: int) -> None:
        self._trial.report(self._sign * float(value), self._fold * STEPS_PER_FOLD + min(int(step), STEPS_PER_FOLD - 2))

    def should_prune(self) -> bool:
        return self._trial.should_prune()


# ---------------------------------------------------------------- the objective
class Objective:
    """Mean inner-fold score of one parameter set; reports per fold (and inside folds) for pruning.

    Args:
        data: the tuning rows (`prepare_tuning_data`).
        cfg: the training config the sampled parameters override.
        tuning: the search space and scoring settings.
        interval: candle interval (Sharpe annualisation).
        threads: LightGBM/torch threads per trial (explicit: OpenMP defaults thrash shared cores).
        configs_dir: where deep-model presets live (section "preset").
    """

    def __init__(self, data: TuningData, cfg: TrainingConfig, tuning: TuningConfig, *, interval: str,
                 threads: int, configs_dir: Path | None = None) -> None:
        if tuning.horizon not in data.horizons:
            raise TuningError(f"tuning horizon {tuning.horizon} is not a label horizon {list(data.horizons)}; "
                              "set `horizon` in the search space to one of them")
        self.data, self.cfg, self.tuning = data, cfg, tuning
        self.interval, self.threads, self.configs_dir = interval, threads, configs_dir
        self.col = data.horizons.index(tuning.horizon)
        self.folds = inner_folds(len(data.Y), cfg.walk_forward, tuning.inner_folds)

    def __call__(self, trial: Any) -> float:
        import optuna

        params = suggest(trial, self.tuning.params)
        scores: list[float] = []
        for fold in self.folds:
            fit = self._fold_lightgbm if self.tuning.section == "lightgbm" else self._fold_sequence
            pred, actual = fit(trial, params, fold)
            scores.append(score(self.tuning.metric, pred, actual, self.tuning.horizon, interval=self.interval,
                                ev=self.cfg.evaluation))
            trial.set_user_attr("fold_scores", scores)
            trial.report(scores[-1], fold_step(fold.index))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold.index}: score {scores[-1]:.5f}")
        return float(np.mean(scores))

    def _feval(self, preds: np.ndarray, dataset: Any) -> tuple[str, float, bool]:
        """LightGBM custom metric on the validation slice: the tuning metric, higher is better."""
        value = score(self.tuning.metric, preds, dataset.get_label(), self.tuning.horizon,
                      interval=self.interval, ev=self.cfg.evaluation)
        return self.tuning.metric, value, True

    def _fold_lightgbm(self, trial: Any, params: dict[str, Any], fold: Any) -> tuple[np.ndarray, np.ndarray]:
        """One booster at the tuned horizon (horizons train independently in LightGBMReturns), with
        exactly its booster parameters, plus the validation slice the pruning callback watches."""
        import lightgbm as lgb
        from optuna_integration import LightGBMPruningCallback

        from pipelines.models import make_model
        from pipelines.training.splits import validation_split

        lgb_cfg = LightGBMConfig.model_validate({**self.cfg.lightgbm.model_dump(), **params,
                                                 "num_threads": self.threads})
        model = make_model("lightgbm", self.cfg.model_copy(update={"lightgbm": lgb_cfg}),
                           self.data.X.shape[1], [self.tuning.horizon])
        booster_params = {**model.booster_params(), "metric": "None"}
        X, y = self.data.X, self.data.Y[:, self.col]
        fit_end, val_start = validation_split(fold.train_start, fold.train_end, self.cfg.walk_forward.purge)
        train = lgb.Dataset(X[fold.train_start:fit_end], label=y[fold.train_start:fit_end], params=booster_params)
        kwargs: dict[str, Any] = {}
        if self.tuning.in_fold_pruning:
            valid = lgb.Dataset(X[val_start:fold.train_end], label=y[val_start:fold.train_end], reference=train)
            cb = LightGBMPruningCallback(_FoldTrial(trial, fold.index), self.tuning.metric, valid_name="val",
                                         report_interval=self.tuning.report_interval)
            kwargs = dict(valid_sets=[valid], valid_names=["val"], feval=self._feval, callbacks=[cb])
        booster = lgb.train(booster_params, train, num_boost_round=lgb_cfg.n_estimators, **kwargs)
        test = slice(fold.test_start, fold.test_end)
        return booster.predict(X[test], num_threads=self.threads), y[test]

    def _fold_sequence(self, trial: Any, params: dict[str, Any], fold: Any) -> tuple[np.ndarray, np.ndarray]:
        """A deep model on windows; the Lightning pruning callback is passed when its `fit` takes
        `callbacks` (val_loss is minimised, so it is reported negated)."""
        from pipelines.models.sequence import sequence_factory
        from pipelines.training.splits import validation_split
        from pipelines.training.windows import sliding_windows

        factory = sequence_factory(self.tuning.model_type, self.tuning.preset,
                                   {**params, "num_threads": self.threads}, self.configs_dir)
        model = factory(self.cfg, self.data.X.shape[1], list(self.data.horizons))
        T = model.sequence_length
        W = sliding_windows(self.data.X, T)  # (n-T+1, T, F); window k ends at row k+T-1

        def rows(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            a = max(a, T - 1)
            return W[a - T + 1 : b - T + 1], self.data.Y[a:b]

        fit_end, val_start = validation_split(fold.train_start, fold.train_end, self.cfg.walk_forward.purge)
        (Xf, Yf), (Xv, Yv), (Xt, Yt) = rows(fold.train_start, fit_end), rows(val_start, fold.train_end), \
            rows(fold.test_start, fold.test_end)
        kwargs: dict[str, Any] = {}
        if self.tuning.in_fold_pruning and "callbacks" in inspect.signature(model.fit).parameters:
            from optuna_integration import PyTorchLightningPruningCallback

            kwargs["callbacks"] = [PyTorchLightningPruningCallback(_FoldTrial(trial, fold.index, -1.0), "val_loss")]
        model.fit(Xf, Yf, X_val=Xv, Y_val=Yv, **kwargs)
        return np.asarray(model.predict(Xt))[:, self.col], Yt[:, self.col]


# ---------------------------------------------------------------- best parameters on disk
def best_params_path(home: Path, model_type: str, symbol: str, interval: str) -> Path:
    """`$KAIROS_HOME/tuned/<model>-<SYMBOL>-<interval>.yaml`."""
    return Path(home) / "tuned" / f"{model_type}-{symbol}-{interval}.yaml"


def redact_storage(url: str) -> str:
    """A storage URL without its password (it goes into files, MLflow tags and logs)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def write_best_params(home: Path, model_type: str, symbol: str, interval: str,
                      overrides: dict[str, dict[str, Any]], provenance: dict[str, Any]) -> Path:
    """Write the tuned overrides + provenance where `kairos train` looks (atomic replace)."""
    path = best_params_path(home, model_type, symbol, interval)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"model_type": model_type, "symbol": symbol, "interval": interval, "overrides": overrides,
           "provenance": {**provenance, "storage": redact_storage(str(provenance.get("storage", "")))}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
    return path


def load_best_params(home: Path, model_type: str, symbol: str, interval: str) -> tuple[dict, dict] | None:
    """(config overrides, provenance) written by `kairos tune`, or None when never tuned.

    Overrides are {"lightgbm": {...}} (pass to `load_training_config(configs_dir, overrides)`) or
    {"preset": {...}} for deep models (pass to `sequence_factory(model_type, overrides=...)`).

    Raises:
        ConfigError: the file exists but is not a tuned-parameters file.
    """
    path = best_params_path(home, model_type, symbol, interval)
    if not path.exists():
        return None
    doc = _read_yaml(path)
    overrides, prov = doc.get("overrides"), doc.get("provenance")
    if not isinstance(overrides, dict) or not isinstance(prov, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ConfigError(f"{path}: not a tuned-parameters file (needs `overrides` and `provenance` mappings); "
                          "delete it or re-run kairos tune")
    return overrides, prov


def provenance_tags(provenance: dict[str, Any]) -> dict[str, str]:
    """MLflow tags for a training run whose parameters came from a study."""
    return {f"kairos.tuned.{k}": str(v) for k, v in provenance.items()}


def provenance_of(study: Any, trial: Any, storage: str, tuning: TuningConfig) -> dict[str, Any]:
    """Where the best parameters came from: study, storage (no password), trial, value, metric, time."""
    return {"study_name": study.study_name, "storage": redact_storage(storage), "trial_number": trial.number,
            "value": float(trial.value), "metric": tuning.metric, "horizon": tuning.horizon,
            "time": datetime.now(UTC).isoformat(timespec="seconds")}
