"""Typed configs, one per component, parsed from `configs/*.yaml` once at the entry point.

Each step receives only its own part (e.g. `WalkForwardConfig`), never the whole file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from pipelines.contracts.yamlio import parse_config, read_yaml


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureConfig(_Frozen):
    """`feature_set`: one registered set ("core27") or a composition, given as a list or "core27+ta"
    (names concatenated in that order; pipelines.features checks the names exist and are distinct)."""

    feature_set: str = "core27"

    @model_validator(mode="before")
    @classmethod
    def _join(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("feature_set"), (list, tuple)):
            data = {**data, "feature_set": "+".join(str(p).strip() for p in data["feature_set"])}
        if isinstance(data, dict) and isinstance(data.get("feature_set"), str):
            parts = [p.strip() for p in data["feature_set"].replace(",", "+").split("+") if p.strip()]
            data = {**data, "feature_set": "+".join(parts)}
        return data


class LabelConfig(_Frozen):
    horizons: tuple[int, ...] = (1, 2, 3, 4, 5)

    @model_validator(mode="after")
    def _check(self) -> LabelConfig:
        if not self.horizons or any(h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive candle counts, got {self.horizons}")
        if list(self.horizons) != sorted(set(self.horizons)):
            raise ValueError(f"horizons must be strictly increasing, got {self.horizons}")
        return self


class WalkForwardConfig(_Frozen):
    train_size: int = Field(20160, gt=0)
    test_size: int = Field(2880, gt=0)
    step: int = Field(2880, gt=0)
    scheme: Literal["rolling", "expanding"] = "rolling"
    purge: int = Field(5, ge=0)
    max_folds: int = Field(6, ge=0)
    window: int = Field(43200, ge=0)


class EvaluationConfig(_Frozen):
    fee_bps: float = Field(1.0, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)


class LightGBMConfig(_Frozen):
    num_leaves: int = Field(31, ge=2)
    learning_rate: float = Field(0.05, gt=0)
    n_estimators: int = Field(200, ge=1)
    min_child_samples: int = Field(200, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    subsample_freq: int = Field(1, ge=0)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    num_threads: int = Field(1, ge=1)
    seed: int = 42
    # A ridge regression on the standardised features first (targets winsorised at 0.5/99.5 %), the
    # trees boosted on what it leaves: a weak linear effect (the reversal rule's -last move) is one
    # coefficient for it and many noisy splits for trees. Regression objectives only (a `direction`
    # classifier ignores it and boosts from its prior, as without it).
    linear_base: bool = False
    linear_l2: float = Field(0.01, ge=0, description="ridge penalty per row, on standardised features")
    # Volatility-scaled targets: fit label / s_t, where s_t is this input feature (e.g. volatility_30m,
    # from candles <= t) floored at its 5th percentile on the training rows; predict (fit) x s_t, so the
    # output stays in label units (the ONNX graph multiplies too). None = fit the labels as they are.
    scale_by: str | None = None


class ExportConfig(_Frozen):
    target_opset: int = Field(15, ge=9, le=15)
    parity_tolerance: float = Field(1e-5, gt=0)
    parity_rtol: float = Field(1e-6, ge=0, description="plus this share of |native output|: float32 rounding")
    parity_rows: int = Field(5000, ge=1)
    # Sequence models only (pipelines.models.sequence.variants): the bundle ships this graph when it passes
    # its gates (predictions and signs on the parity rows; direction accuracy of the newest fold's model on
    # that fold's out-of-sample rows), else the fp32 export stays and the run records why.
    variant: Literal["fp32", "optimized", "int8", "fp16"] = "fp32"
    variant_max_accuracy_drop_pp: float | None = Field(
        None,
        ge=0,
        description="walk-forward accuracy drop allowed, pp, worst horizon; None: the variant's default",
    )


class TrainingConfig(_Frozen):
    """Everything `kairos train` needs, assembled from configs/defaults.yaml."""

    features: FeatureConfig = FeatureConfig()
    labels: LabelConfig = LabelConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    lightgbm: LightGBMConfig = LightGBMConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _purge_covers_horizon(self) -> TrainingConfig:
        if self.walk_forward.purge < max(self.labels.horizons):
            raise ValueError(
                f"walk_forward.purge={self.walk_forward.purge} is shorter than the longest horizon "
                f"{max(self.labels.horizons)}: labels of the last training rows would overlap the test "
                "window; set purge >= max(horizons)"
            )
        return self


class PromotionPolicy(_Frozen):
    min_lift_pp: float = Field(0.5, ge=0, description="accuracy tasks: lift in percentage points")
    min_lift: float | None = Field(
        None, ge=0, description="lift in the task's promotion-metric units (None: min_lift_pp / 100)"
    )
    review_min_lift: float | None = Field(
        None,
        ge=0,
        description="A/B review: lift in the task's review-loss units when they differ from the promotion "
        "metric's (e.g. whale: PR-AUC to promote, Brier to review); None: as min_lift",
    )
    horizon: int = Field(1, ge=1)
    require_beats_baselines: bool = True
    min_samples: int = Field(500, ge=1)
    alpha: float = Field(0.05, gt=0, lt=1)


# The loader lives in the contracts (serving parses configs/serving.yaml with it too); the old private
# names stay importable for the modules that used them.
_read_yaml = read_yaml
_parse = parse_config


def load_training_config(
    configs_dir: Path, overrides: dict | None = None, task: str | None = None
) -> TrainingConfig:
    """Parse `defaults.yaml`, then the task's `training:` overrides (`configs/tasks/<task>.yaml`, e.g. its
    horizons), then nested `overrides` (e.g. tuned LightGBM params), into TrainingConfig."""
    path = configs_dir / "defaults.yaml"
    data = _read_yaml(path)
    layers = []
    if task is not None:
        from pipelines.tasks import read_task_file

        layers.append(read_task_file(configs_dir, task).training)
        path = configs_dir / "tasks" / f"{task}.yaml"  # errors name the file that set the value last
    layers.append(overrides or {})
    for layer in layers:
        for key, val in layer.items():
            data[key] = {**data.get(key, {}), **val}
    return _parse(TrainingConfig, data, path)


def load_promotion_policy(configs_dir: Path, task: str | None = None) -> PromotionPolicy:
    """`promotion.yaml`, with the task's `promotion:` overrides when `task` is given."""
    path = configs_dir / "promotion.yaml"
    data = _read_yaml(path)
    if task is not None:
        from pipelines.tasks import read_task_file

        data = {**data, **read_task_file(configs_dir, task).promotion}
    return _parse(PromotionPolicy, data, path)


# --- Deep sequence models and ensembles (issue 5) ------------------------------------------------
# Presets live in configs/models/<model_type>.yaml as {default: <name>, presets: {<name>: {...}}}.

SEQUENCE_ARCHITECTURES = ("lstm_attention", "transformer", "tft", "mamba")


class SequenceModelConfig(_Frozen):
    """One preset of a deep sequence model: architecture, loss, and the shared training loop."""

    architecture: Literal["lstm_attention", "transformer", "tft", "mamba"]
    sequence_length: int = Field(60, ge=2, description="candles per window T")
    d_model: int = Field(32, ge=4, description="hidden width")
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1, description="attention heads (lstm_attention, transformer, tft)")
    ff_mult: int = Field(4, ge=1, description="feed-forward width multiplier (transformer)")
    dropout: float = Field(0.1, ge=0, lt=1)
    bidirectional: bool = False  # lstm_attention: the whole window is past data, so this is not look-ahead
    d_state: int = Field(16, ge=1, description="mamba: SSM state size per channel")
    d_conv: int = Field(4, ge=1, description="mamba: causal depthwise conv kernel")
    expand: int = Field(2, ge=1, description="mamba: inner width = expand * d_model")
    quantiles: tuple[float, float, float] = (0.1, 0.5, 0.9)  # tft only
    loss: Literal["mse", "huber", "direction", "sharpe", "quantile"] = "mse"
    huber_delta: float = Field(1.0, gt=0, description="in units of the training-label std")
    direction_weight: float = Field(0.5, ge=0, description="lambda of the direction-aware penalty")
    sharpe_k: float = Field(5.0, gt=0, description="position = tanh(k * scaled prediction)")
    max_epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_frac: float = Field(0.05, ge=0, lt=1, description="share of all steps spent in linear warm-up")
    min_lr_frac: float = Field(0.05, ge=0, le=1, description="cosine floor as a share of learning_rate")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    patience: int = Field(3, ge=1, description="epochs without val improvement before stopping")
    swa: bool = False
    swa_start_frac: float = Field(0.5, ge=0, lt=1, description="SWA averages epochs after this share")
    mixed_precision: bool = True  # used only when CUDA is present; CPU always trains in float32
    mc_samples: int = Field(16, ge=2, description="frozen MC-dropout masks in the exported head")
    seed: int = 42
    num_threads: int = Field(2, ge=1, description="torch intra-op threads (explicit: 2 busy cores)")
    opset: int = Field(17, ge=14, le=20)
    parity_tolerance: float = Field(1e-4, gt=0)

    @model_validator(mode="after")
    def _check(self) -> SequenceModelConfig:
        if self.architecture != "mamba" and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.architecture == "tft") != (self.loss == "quantile"):
            raise ValueError(
                f"loss={self.loss!r} with architecture={self.architecture!r}: tft trains with loss 'quantile' "
                "and the point models with mse|huber|direction|sharpe"
            )
        q = self.quantiles
        if not 0 < q[0] < q[1] < q[2] < 1:
            raise ValueError(f"quantiles must be increasing in (0, 1), got {q}")
        return self


class EnsembleConfig(_Frozen):
    """A sequence model blended with the tabular LightGBM model (002 seed: 0.5 / 0.5)."""

    sequence_model: Literal["lstm_attention", "transformer", "tft", "mamba"] = "mamba"
    sequence_preset: str = "small"
    sequence_overrides: dict[str, float | int | str | bool] = Field(
        default_factory=dict, description="flat overrides of the sequence preset, e.g. {max_epochs: 2}"
    )
    sequence_weight: float = Field(0.5, ge=0)
    tabular_weight: float = Field(0.5, ge=0)
    parity_tolerance: float = Field(1e-4, gt=0)
    opset: int = Field(15, ge=14, le=15, description="= LightGBM's: onnxmltools converts at <= 15")

    @model_validator(mode="after")
    def _check(self) -> EnsembleConfig:
        if self.sequence_weight + self.tabular_weight <= 0:
            raise ValueError("sequence_weight + tabular_weight must be > 0")
        return self


def load_model_preset(
    configs_dir: Path, model_type: str, preset: str | None = None, overrides: dict | None = None
) -> BaseModel:
    """Parse one preset of `configs/models/<model_type>.yaml` (plus flat `overrides`) into the family's config.

    A shorthand for `pipelines.models.get_spec(model_type).config(...)` with a default training config.

    Args:
        configs_dir: the configs directory (Settings.configs_dir).
        model_type: a model family with a preset file, e.g. one of SEQUENCE_ARCHITECTURES or "ensemble".
        preset: preset name; None = the file's `default`.
        overrides: flat field overrides, e.g. {"max_epochs": 2}.
    """
    from pipelines.models import ModelContext, get_spec

    return get_spec(model_type, configs_dir).config(
        ModelContext(TrainingConfig(), Path(configs_dir)), preset, overrides
    )


# --- Hyperparameter tuning (issue 6) -------------------------------------------------------------
# One file per model: configs/search_spaces/<model_type>.yaml = the objective settings + `params`.
# Semantic checks (every parameter is a field of the model's config, bounds it accepts) live in
# pipelines.tuning.objective.load_search_space, which knows the model configs.


class ParamSpec(_Frozen):
    """One tunable hyperparameter: an int/float range (optionally log-scaled or stepped) or choices."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: tuple[str | int | float | bool, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes `choices`, not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} parameter needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low={self.low} must be < high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("log=true and step cannot be combined (Optuna samples one or the other)")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int parameter needs whole bounds, got low={self.low}, high={self.high}")
        if self.choices is not None:
            raise ValueError(f"an {self.type} parameter takes low/high, not `choices`")
        return self


class PrunerConfig(_Frozen):
    """Optuna pruner. Steps are global: fold k's reports use steps [k*STEPS_PER_FOLD, (k+1)*STEPS_PER_FOLD)."""

    kind: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0, description="median: trials finished before any pruning")
    n_warmup_steps: int = Field(0, ge=0, description="median: global steps before a trial can be pruned")
    reduction_factor: int = Field(3, ge=2, description="hyperband")


class TuningConfig(_Frozen):
    """A search space plus how trials are scored (parsed from configs/search_spaces/<model>.yaml)."""

    model_type: str
    section: Literal["lightgbm", "preset"] | None = Field(
        None,
        description="ignored, kept so older search spaces parse: every family's tuned params override "
        "its config (pipelines.models.spec.ModelSpec.config)",
    )
    preset: str | None = Field(
        None,
        description="the preset of configs/models/<model_type>.yaml the params "
        "override (None = the file's default; LightGBM: the defaults.yaml block)",
    )
    metric: str | None = Field(None, description="a metric of the task's `tuning_metrics` (None: its first)")
    horizon: int | None = Field(
        None,
        ge=1,
        description="the label horizon (candles) the metric is taken at "
        "(None: the promotion policy's horizon for the task)",
    )
    inner_folds: int = Field(3, ge=1, description="newest inner walk-forward folds scored per trial")
    seed: int = 42
    n_startup_trials: int = Field(10, ge=0, description="TPE: random trials before modelling")
    pruner: PrunerConfig = PrunerConfig()
    in_fold_pruning: bool = Field(
        True, description="also report inside a fold (LightGBM/Lightning callbacks)"
    )
    report_interval: int = Field(10, ge=1, description="boosting iterations between in-fold reports")
    heartbeat_interval: int = Field(10, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(30, ge=1, description="seconds without a heartbeat before a trial is FAILed")
    sqlite_timeout_s: float = Field(60.0, gt=0, description="SQLite busy timeout with several workers")
    params: dict[str, ParamSpec]

    @model_validator(mode="after")
    def _check(self) -> TuningConfig:
        if not self.params:
            raise ValueError("`params` is empty: name at least one parameter to tune")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period={self.grace_period} must exceed heartbeat_interval={self.heartbeat_interval}, "
                "or live trials would be failed as stale"
            )
        return self


# --- Monitoring (issue 14): configs/monitoring.yaml ----------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_seconds(value: Any) -> float:
    """A duration as seconds: "90s", "10m", "24h", "2d", or a number of seconds.

    Raises:
        ValueError: anything else (the message shows the accepted forms).
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = _DURATION.match(str(value))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(
            f"duration {value!r} is not a positive number with a unit s, m, h or d (e.g. 24h, 10m)"
        )
    return float(m.group(1)) * _UNIT_S[m.group(2)]


Seconds = Annotated[float, BeforeValidator(duration_seconds)]
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")  # increasing


class _Rule(_Frozen):
    enabled: bool = True
    severity: Severity = "warning"


class DriftRule(_Rule):
    """Drift of features and outputs: statistic, thresholds, window and consecutive windows are the
    calibrated alarm stored in the serving model's reference profile (nothing to set here)."""

    severity: Severity = "critical"


class LiveRule(_Rule):
    """A live-performance check over `MonitoringConfig.live_window`; silent below `min_rows` outcomes."""

    min_rows: int = Field(300, ge=2, description="resolved live rows (per horizon) before the check may fire")
    alpha: float = Field(0.05, gt=0, lt=1, description="live_below_baseline: one-sided level of the DM test")


class LatencyRule(_Rule):
    budget_us: float | None = Field(
        None, gt=0, description="a prediction slower than this is a violation; None: serving.yaml's budget"
    )
    threshold: float = Field(60.0, ge=0, description="violations per hour above which an hour counts")
    for_: Seconds = Field(3600.0, alias="for", description="every hour of this span must count")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class StalenessRule(_Rule):
    severity: Severity = "critical"
    threshold: Seconds = Field(600.0, description="silence longer than this fires")


class MonitoringRules(_Frozen):
    drift: DriftRule = DriftRule()
    live_below_backtest: LiveRule = LiveRule()
    live_below_baseline: LiveRule = LiveRule()
    latency_budget: LatencyRule = LatencyRule()
    prediction_staleness: StalenessRule = StalenessRule()
    data_staleness: StalenessRule = StalenessRule()
    data_validation: _Rule = _Rule(severity="critical")


class WebhookSink(_Frozen):
    url: str | None = Field(None, description="Slack-compatible incoming webhook; None: the env variable")
    url_env: str = "KAIROS_ALERT_WEBHOOK"
    timeout_s: float = Field(5.0, gt=0)
    min_severity: Severity = "warning"


class AlertSinks(_Frozen):
    log: bool = True
    webhook: WebhookSink = WebhookSink()


class RetrainOnDrift(_Frozen):
    """What the monitor starts when drift fires on valid data: flows/retrain.py daily_retrain."""

    enabled: bool = True
    source: str = "synthetic"
    options: dict[str, Any] = Field(default_factory=lambda: {"days": 1})
    model_type: str | None = Field(None, description="None: the serving model's family")
    cooldown: Seconds = Field(86400.0, description="no second drift retrain of a model within this span")


class MonitoringConfig(_Frozen):
    live_window: Seconds = Field(86400.0, description="span of the live metrics (accuracy_24h)")
    rules: MonitoringRules = MonitoringRules()
    sinks: AlertSinks = AlertSinks()
    retrain: RetrainOnDrift = RetrainOnDrift()


DEFAULT_LATENCY_BUDGET_US = 1000.0


def load_monitoring_config(configs_dir: Path) -> MonitoringConfig:
    """`monitoring.yaml` (every field has a default: a missing file means the defaults). A latency rule
    without `budget_us` takes serving's (`monitoring.latency_budget_us` of serving.yaml), so the monitor
    and `kairos_latency_budget_violations_total` count against one budget."""
    path = configs_dir / "monitoring.yaml"
    cfg = _parse(MonitoringConfig, _read_yaml(path) if path.exists() else {}, path)
    if cfg.rules.latency_budget.budget_us is None:
        serving = configs_dir / "serving.yaml"
        section = _read_yaml(serving).get("monitoring") if serving.exists() else None
        budget = (section or {}).get("latency_budget_us") if isinstance(section, dict) else None
        rule = cfg.rules.latency_budget.model_copy(
            update={"budget_us": float(budget) if budget else DEFAULT_LATENCY_BUDGET_US}
        )
        cfg = cfg.model_copy(update={"rules": cfg.rules.model_copy(update={"latency_budget": rule})})
    return cfg


class LogRetention(_Frozen):
    max_age_days: int = Field(90, ge=1, description="prediction-log day files older than this are deleted")


class RunRetention(_Frozen):
    max_age_days: float = Field(30.0, gt=0, description="training runs started longer ago may be deleted ...")
    keep_last: int = Field(5, ge=0, description="... except each model's newest versions (and aliased ones)")
    purge: bool = Field(True, description="also `mlflow gc` them (embedded SQLite store only)")


class RetentionConfig(_Frozen):
    """`retention.yaml`: what `kairos data prune` (and the `retention` deployment) deletes."""

    prediction_logs: LogRetention = LogRetention()
    training_runs: RunRetention = RunRetention()


def load_retention_config(configs_dir: Path) -> RetentionConfig:
    """`retention.yaml` (every field has a default: a missing file means the defaults)."""
    path = configs_dir / "retention.yaml"
    return _parse(RetentionConfig, _read_yaml(path) if path.exists() else {}, path)
