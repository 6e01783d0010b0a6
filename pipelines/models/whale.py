"""The whale detector (the `000_*` seed): a calibrated classifier + an anomaly ensemble → threat levels.

One model, one ONNX graph ("features" float32 [N, F] → four outputs):
- `whale_probability` [N, 1]: a LightGBM binary classifier (positives weighted n_neg / n_pos: the class
  imbalance), its log-odds recalibrated by Platt scaling p = sigmoid(a * logit + b) fitted on
  out-of-fold predictions (group folds: rows of one event window never straddle a fit and its
  calibration rows);
- `anomaly_score` [N, 1]: unsupervised, fitted on the training rows labelled normal, over the features
  that are never NaN by design: an Isolation Forest (Liu et al. 2008; scikit-learn, exported as one
  ONNX tree ensemble, see `iforest_nodes`) and a robust per-feature score (the largest
  |x - median| / (1.4826 MAD) across features),
  each standardised by its median and IQR on the normal rows, averaged;
- `threat_level` [N, 1]: 1 + the number of thresholds the threat score exceeds, where the threat score
  is the standardised (median/IQR on normal rows) calibrated log-odds plus the anomaly score. The four
  thresholds are set so that levels 2, 3, 4, 5 fire on at most 10 %, 1 %, 0.1 %, 0.01 % of normal
  minutes: the 10 % one is the empirical quantile of the out-of-fold threat scores of normal training
  rows; the others by extreme-value theory, peaks over threshold (Pickands-Balkema-de Haan: the excesses
  over a high threshold u are generalised Pareto; Siffer et al. 2017 use the same quantile for SPOT)
  fitted to the excesses over u = the 98th percentile;
- `feature_deviation` [N, F]: |x - median| / scale per input feature (0 where the input is NaN), the
  alert's "top contributing features".

Pure numpy + LightGBM + scikit-learn (no torch, MLflow or Prefect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from pipelines.models.base import INPUT_NAME, ModelError, check_fitted

OUTPUTS = ("whale_probability", "anomaly_score", "threat_level", "feature_deviation")
RATES = (0.1, 0.01, 0.001, 0.0001)  # levels 2..5: largest share of normal minutes each may fire on
POT_QUANTILE = 0.98  # the peaks-over-threshold level u (2 % of normal rows are excesses)


@dataclass(frozen=True)
class WhaleDetectorConfig:
    n_estimators: int = 200
    num_leaves: int = 15
    learning_rate: float = 0.05
    min_child_samples: int = 200
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    num_threads: int = 1
    seed: int = 42
    iforest_trees: int = 100
    iforest_samples: int = 256
    anomaly_rows: int = 50_000  # normal rows the Isolation Forest is fitted on (a seeded sample)
    calibration_folds: int = 4
    rates: tuple[float, ...] = RATES
    classifier: str = "lightgbm"  # or a sequence architecture of the zoo: transformer, lstm_attention, ...
    preset: str | None = None  # the sequence model's preset (configs/models/<classifier>.yaml)
    sequence_overrides: tuple[tuple[str, Any], ...] = ()  # flat preset overrides, e.g. (("max_epochs", 3),)

    @property
    def sequence(self) -> bool:
        return self.classifier != "lightgbm"

    @classmethod
    def from_options(cls, lightgbm: Any = None, options: dict[str, Any] | None = None) -> WhaleDetectorConfig:
        """From the training config's `lightgbm` block and the task's `options.detector`."""
        kw: dict[str, Any] = {}
        if lightgbm is not None:
            for k in ("n_estimators", "num_leaves", "learning_rate", "min_child_samples", "subsample",
                      "colsample_bytree", "reg_lambda", "num_threads", "seed"):  # fmt: skip
                if hasattr(lightgbm, k):
                    kw[k] = getattr(lightgbm, k)
        det = dict((options or {}).get("detector", {}) or {})
        unknown = set(det) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelError(
                f"whale detector has no option(s) {sorted(unknown)}; it takes {sorted(cls.__dataclass_fields__)}"
            )
        kw.update(det)
        if "rates" in kw:
            kw["rates"] = tuple(float(r) for r in kw["rates"])
        return cls(**kw)


def pot_thresholds(
    score: np.ndarray, rates: tuple[float, ...], u_quantile: float = POT_QUANTILE
) -> tuple[np.ndarray, dict[str, float]]:
    """Score thresholds exceeded by a share `rate` of these (normal) rows, one per rate.

    A rate >= 1 - u_quantile uses the empirical quantile; a smaller one the generalised Pareto fit to
    the excesses over u (peaks over threshold): q = u + sigma/xi * ((rate/zeta)^-xi - 1), zeta = the
    share above u (xi -> 0: u - sigma * ln(rate/zeta)). Thresholds are made strictly increasing.
    """
    from scipy.stats import genpareto

    s = np.sort(np.asarray(score, float)[np.isfinite(score)])
    if s.size < 100:
        raise ModelError(f"{s.size} normal rows are too few to set threat thresholds (need >= 100)")
    u = float(np.quantile(s, u_quantile))
    exc = s[s > u] - u
    zeta = exc.size / s.size
    xi, _, sigma = genpareto.fit(exc, floc=0.0) if exc.size >= 10 else (0.0, 0.0, float(np.std(exc) or 1.0))
    out = []
    for r in rates:
        if r >= zeta:
            q = float(np.quantile(s, 1.0 - r))
        elif abs(xi) < 1e-6:
            q = u - sigma * math.log(r / zeta)
        else:
            q = u + sigma / xi * ((r / zeta) ** (-xi) - 1.0)
        out.append(q)
    thr = np.asarray(out)
    for i in range(1, thr.size):  # strictly increasing levels
        thr[i] = max(thr[i], np.nextafter(thr[i - 1], np.inf))
    return thr, {"u": u, "zeta": zeta, "xi": float(xi), "sigma": float(sigma), "rows": int(s.size)}


def _robust_centre(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: median and a robust scale (1.4826 MAD; else 1.2533 x mean |x - median|; else 1)."""
    import warnings

    with warnings.catch_warnings():  # an all-NaN column (a nullable feature) gets median 0, scale 1
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(x, axis=0)
        dev = np.abs(x - med)
        mad = 1.4826 * np.nanmedian(dev, axis=0)
        mean_abs = 1.2533 * np.nanmean(dev, axis=0)
    scale = np.where(mad > 0, mad, np.where(mean_abs > 0, mean_abs, 1.0))
    return np.nan_to_num(med), np.nan_to_num(scale, nan=1.0)


def _centre_iqr(v: np.ndarray) -> tuple[float, float]:
    q1, med, q3 = np.quantile(np.asarray(v, float), [0.25, 0.5, 0.75])
    return float(med), float(q3 - q1) if q3 > q1 else 1.0


def _platt(logit: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * logit + b) by maximum likelihood (Newton steps, L2 1e-6)."""
    x, y = np.asarray(logit, float), np.asarray(y, float)
    a, b = 1.0, 0.0
    for _ in range(50):
        z = np.clip(a * x + b, -35, 35)
        p = 1.0 / (1.0 + np.exp(-z))
        w = p * (1 - p) + 1e-12
        g = np.array([np.sum((p - y) * x), np.sum(p - y)]) + 1e-6 * np.array([a, b])
        H = np.array([[np.sum(w * x * x) + 1e-6, np.sum(w * x)], [np.sum(w * x), np.sum(w) + 1e-6]])
        step = np.linalg.solve(H, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def group_folds(groups: np.ndarray, k: int) -> list[np.ndarray]:
    """k folds of whole groups (consecutive groups, in order of first appearance): row masks."""
    uniq = list(dict.fromkeys(np.asarray(groups).tolist()))
    k = max(2, min(k, len(uniq)))
    parts = np.array_split(np.arange(len(uniq)), k)
    g = np.asarray(groups)
    return [np.isin(g, [uniq[i] for i in part]) for part in parts]


def _avg_path(n: np.ndarray) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n points
    (Liu et al. 2008; scikit-learn's `_average_path_length`)."""
    n = np.asarray(n, float)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    m = n > 2
    out[m] = 2.0 * (np.log(n[m] - 1.0) + np.euler_gamma) - 2.0 * (n[m] - 1.0) / n[m]
    return out


def iforest_nodes(forest: Any) -> tuple[dict[str, list], float]:
    """A fitted scikit-learn IsolationForest as the attributes of ONE ai.onnx.ml TreeEnsembleRegressor
    whose output is the mean path length E[h(x)] (leaf value = (depth + c(leaf samples)) / trees), and
    the normaliser c(max_samples). score_samples = -2^(-E[h]/c). Thresholds are rounded down to float32
    so that every branch decision on float32 inputs is scikit-learn's (x <= t). One tree-ensemble node
    instead of skl2onnx's per-tree arithmetic: ~20x faster on one row."""
    from pipelines.training.export import _float32_at_most

    attrs: dict[str, list] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
        "nodes_truenodeids", "nodes_falsenodeids", "target_treeids", "target_nodeids", "target_ids",
        "target_weights")}  # fmt: skip
    n_trees = len(forest.estimators_)
    for t, (est, feats) in enumerate(zip(forest.estimators_, forest.estimators_features_)):
        tree = est.tree_
        depth = np.zeros(tree.node_count)
        for i in range(tree.node_count):  # children have larger ids than their parent
            for c in (tree.children_left[i], tree.children_right[i]):
                if c >= 0:
                    depth[c] = depth[i] + 1
        leaf_value = depth + _avg_path(tree.n_node_samples)
        for i in range(tree.node_count):
            leaf = tree.children_left[i] < 0
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(i)
            attrs["nodes_featureids"].append(0 if leaf else int(feats[tree.feature[i]]))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_values"].append(0.0 if leaf else _float32_at_most(float(tree.threshold[i])))
            attrs["nodes_truenodeids"].append(0 if leaf else int(tree.children_left[i]))
            attrs["nodes_falsenodeids"].append(0 if leaf else int(tree.children_right[i]))
            if leaf:
                attrs["target_treeids"].append(t)
                attrs["target_nodeids"].append(i)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(leaf_value[i]) / n_trees)
    return attrs, float(_avg_path(np.array([forest.max_samples_]))[0])


@dataclass
class WhaleDetector:
    """Fit with `fit(X, y, groups)`; `predict(X)` → dict of the four outputs (+ "threat_score")."""

    cfg: WhaleDetectorConfig
    feature_names: tuple[str, ...]
    nullable: tuple[str, ...] = ()
    model_type: str = "whale_detector"
    input_kind: str = "tabular"
    sequence_length: int | None = None
    parity_tolerance: float = 1e-4
    accepts_nan: bool = True
    booster_: Any = None
    iforest_: Any = None
    platt_: tuple[float, float] = (1.0, 0.0)
    med_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    std_: dict[str, tuple[float, float]] = field(default_factory=dict)
    thresholds_: np.ndarray | None = None
    pot_: dict[str, float] = field(default_factory=dict)
    oof_: np.ndarray | None = None  # out-of-fold calibrated probabilities of the training rows

    @property
    def anomaly_columns(self) -> np.ndarray:
        return np.array([i for i, n in enumerate(self.feature_names) if n not in self.nullable], np.int64)

    # ------------------------------------------------------------------ fit
    def _booster(self, X: np.ndarray, y: np.ndarray) -> Any:
        import lightgbm as lgb

        c = self.cfg
        pos = float(y.sum())
        params = {
            "objective": "binary",
            "num_leaves": c.num_leaves,
            "learning_rate": c.learning_rate,
            "min_data_in_leaf": c.min_child_samples,
            "bagging_fraction": c.subsample,
            "bagging_freq": 1,
            "feature_fraction": c.colsample_bytree,
            "lambda_l2": c.reg_lambda,
            "scale_pos_weight": (len(y) - pos) / pos if pos > 0 else 1.0,
            "num_threads": c.num_threads,
            "seed": c.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        return lgb.train(params, lgb.Dataset(X, label=y, free_raw_data=True), num_boost_round=c.n_estimators)

    def _fit_classifier(self, Xc: np.ndarray, y: np.ndarray) -> Any:
        if not self.cfg.sequence:
            return self._booster(Xc, y)
        from pipelines.models.sequence import SequenceClassifier

        clf = SequenceClassifier.from_preset(
            self.cfg.classifier,
            Xc.shape[2],
            self.cfg.preset,
            overrides=dict(self.cfg.sequence_overrides) or None,
            seed=self.cfg.seed,
            num_threads=self.cfg.num_threads,
        )
        return clf.fit(Xc, y)

    def _logit(self, clf: Any, Xc: np.ndarray) -> np.ndarray:
        if not self.cfg.sequence:
            threads = 1 if len(Xc) <= 1024 else self.cfg.num_threads
            return clf.predict(Xc, raw_score=True, num_threads=threads)
        return clf.predict_logit(Xc)

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X (N, F) or windows (N, T, F) → (classifier input, the rows at t (N, F)). A sequence classifier
        reads the features that are never NaN by design (networks cannot take NaN)."""
        X = np.asarray(X, np.float32)
        want = 3 if self.cfg.sequence else 2
        if X.ndim != want or X.shape[-1] != len(self.feature_names):
            shape = "(N, T, F)" if self.cfg.sequence else "(N, F)"
            raise ModelError(
                f"whale detector ({self.cfg.classifier}): X has shape {X.shape}; expected {shape} with "
                f"F = {len(self.feature_names)}"
            )
        if not self.cfg.sequence:
            return X, X
        return np.ascontiguousarray(X[:, :, self.anomaly_columns]), X[:, -1, :]

    def fit(
        self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, normal: np.ndarray | None = None
    ) -> WhaleDetector:
        """X float32 (N, F) — or windows (N, T, F) for a sequence classifier —, y 0/1 (N,), groups (N,)
        event-window ids (in time order), `normal` (N,) bool rows that count as normal minutes for the
        anomaly fit and the threat thresholds (default: y == 0)."""
        from sklearn.ensemble import IsolationForest

        Xc, X = self._split(X)
        y = np.asarray(y, float)
        if len(y) != len(X):
            raise ModelError(f"whale detector: {len(X)} rows of X but {len(y)} labels")
        if not 0 < y.sum() < len(y):
            raise ModelError(
                f"whale detector: the training rows hold {int(y.sum())} positives of {len(y)}; need both classes"
            )
        normal = (y == 0) if normal is None else (np.asarray(normal, bool) & (y == 0))
        # 1. out-of-fold log-odds (group folds) → Platt calibration
        oof = np.full(len(y), np.nan)
        for mask in group_folds(groups, self.cfg.calibration_folds):
            if y[~mask].sum() == 0:
                continue
            oof[mask] = self._logit(self._fit_classifier(Xc[~mask], y[~mask]), Xc[mask])
        ok = np.isfinite(oof)
        self.platt_ = _platt(oof[ok], y[ok])
        self.booster_ = self._fit_classifier(Xc, y)
        # 2. anomaly ensemble on normal rows
        cols = self.anomaly_columns
        Xn = X[normal][:, cols]
        self.med_, self.scale_ = _robust_centre(X[normal].astype(np.float64))
        rng = np.random.default_rng(self.cfg.seed)
        fit_rows = (
            Xn
            if len(Xn) <= self.cfg.anomaly_rows
            else Xn[rng.choice(len(Xn), self.cfg.anomaly_rows, replace=False)]
        )
        self.iforest_ = IsolationForest(
            n_estimators=self.cfg.iforest_trees,
            max_samples=min(self.cfg.iforest_samples, len(fit_rows)),
            random_state=self.cfg.seed,
            n_jobs=1,
        ).fit(fit_rows)
        iso, rob = self._anomaly_parts(X)
        self.std_ = {"iso": _centre_iqr(iso[normal]), "rob": _centre_iqr(rob[normal])}
        anomaly = self._anomaly(iso, rob)
        a, b = self.platt_
        z_oof = a * oof + b
        self.std_["logit"] = _centre_iqr(z_oof[normal & ok])
        threat = self._threat(z_oof, anomaly)
        self.thresholds_, self.pot_ = pot_thresholds(threat[normal & ok], self.cfg.rates)
        self.oof_ = np.where(ok, expit(z_oof), np.nan)
        return self

    # ------------------------------------------------------------------ predict (native, float64 on float32 inputs)
    def _anomaly_parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cols = self.anomaly_columns
        iso = -self.iforest_.decision_function(np.asarray(X, np.float32)[:, cols]).astype(np.float64)
        dev = self._deviation(X)
        rob = np.log1p(dev[:, cols].max(axis=1))
        return iso, rob

    def _deviation(self, X: np.ndarray) -> np.ndarray:
        d = np.abs(np.asarray(X, np.float64) - self.med_) / self.scale_
        return np.where(np.isnan(d), 0.0, d)

    def _anomaly(self, iso: np.ndarray, rob: np.ndarray) -> np.ndarray:
        (mi, si), (mr, sr) = self.std_["iso"], self.std_["rob"]
        return 0.5 * (iso - mi) / si + 0.5 * (rob - mr) / sr

    def _threat(self, z: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
        ml, sl = self.std_["logit"]
        return (z - ml) / sl + anomaly

    def predict_all(self, X: np.ndarray) -> dict[str, np.ndarray]:
        check_fitted(self, "booster_")
        Xc, X = self._split(X)
        a, b = self.platt_
        z = a * self._logit(self.booster_, Xc) + b
        iso, rob = self._anomaly_parts(X)
        anomaly = self._anomaly(iso, rob)
        threat = self._threat(z, anomaly)
        level = 1.0 + (threat[:, None] > self.thresholds_[None, :]).sum(axis=1)
        return {
            "whale_probability": expit(z),
            "anomaly_score": anomaly,
            "threat_level": level,
            "feature_deviation": self._deviation(X),
            "threat_score": threat,
        }

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N, 1) whale probability (the task's output; the training path and parity read this)."""
        return self.predict_all(X)["whale_probability"][:, None]

    def get_params(self) -> dict[str, Any]:
        c = self.cfg
        return {
            **{k: getattr(c, k) for k in c.__dataclass_fields__ if k != "rates"},
            "rates": list(c.rates),
            "platt_a": self.platt_[0],
            "platt_b": self.platt_[1],
            "thresholds": [float(t) for t in (self.thresholds_ if self.thresholds_ is not None else [])],
        }

    # ------------------------------------------------------------------ export
    def to_onnx(self, target_opset: int = 15) -> bytes:
        """One self-contained graph: features [N, F] (a sequence classifier: [N, T, F]) → whale_probability,
        anomaly_score, threat_level, feature_deviation (see the module docstring)."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from pipelines.training.export import check_self_contained, prefix_graph

        check_fitted(self, "booster_")
        F = len(self.feature_names)
        cols = self.anomaly_columns
        tree_attrs, c_norm = iforest_nodes(self.iforest_)
        inits: list[Any] = []
        opsets: dict[str, int] = {}
        if not self.cfg.sequence:
            from pipelines.models.base import OUTPUT_NAME
            from pipelines.models.lightgbm import _as_regressor
            from pipelines.training.export import lightgbm_to_onnx

            part = onnx.load_model_from_string(
                lightgbm_to_onnx([_as_regressor(self.booster_)], F, target_opset=target_opset)
            )
            head, x_t, logit = list(part.graph.node), INPUT_NAME, OUTPUT_NAME
            inits += list(part.graph.initializer)
            input_shape: list[int | None] = [None, F]
        else:  # the network reads the never-NaN columns of the window; the rest reads the row at t
            part = onnx.load_model_from_string(self.booster_.to_onnx(target_opset))
            T = int(self.booster_.sequence_length)
            (net_in,), (net_out,) = [i.name for i in part.graph.input], [o.name for o in part.graph.output]
            body, body_inits, _ = prefix_graph(
                part.graph, "net_", rename={net_in: "net_in", net_out: "logit"}
            )
            inits += body_inits + [numpy_helper.from_array(np.asarray(T - 1, np.int64), "last_step")]
            inits.append(numpy_helper.from_array(cols.astype(np.int64), "net_cols"))
            head = [
                helper.make_node("Gather", [INPUT_NAME, "net_cols"], ["net_in"], axis=2),
                *body,
                helper.make_node("Gather", [INPUT_NAME, "last_step"], ["x_t"], axis=1),
            ]
            x_t, logit, input_shape = "x_t", "logit", [None, T, F]
        for op in part.opset_import:
            opsets[op.domain or ""] = max(opsets.get(op.domain or "", 0), op.version)

        def const(name: str, value: Any, dtype: Any = np.float32) -> str:
            inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
            return name

        a, b = self.platt_
        (mi, si), (mr, sr), (ml, sl) = self.std_["iso"], self.std_["rob"], self.std_["logit"]
        n = helper.make_node
        offset = float(self.iforest_.offset_)
        nodes = [
            # Isolation Forest: E[h] by one tree ensemble; iso = -decision_function = 2^(-E/c) + offset
            n("Gather", [x_t, const("cols", cols, np.int64)], ["iso_in"], axis=1),
            n(
                "TreeEnsembleRegressor",
                ["iso_in"],
                ["iso_path"],
                domain="ai.onnx.ml",
                n_targets=1,
                aggregate_function="SUM",
                post_transform="NONE",
                **tree_attrs,
            ),  # fmt: skip
            n("Mul", ["iso_path", const("neg_ln2_c", [[-math.log(2.0) / c_norm]])], ["iso_e"]),
            n("Exp", ["iso_e"], ["iso_pow"]),
            n("Add", ["iso_pow", const("iso_offset", [[offset]])], ["iso"]),
        ]
        nodes += [
            # calibrated log-odds and probability
            n("Mul", [logit, const("platt_a", [[a]])], ["z0"]),
            n("Add", ["z0", const("platt_b", [[b]])], ["z"]),
            n("Sigmoid", ["z"], ["whale_probability"]),
            # robust per-feature deviation (NaN inputs → 0)
            n("Sub", [x_t, const("med", self.med_[None, :])], ["dx"]),
            n("Abs", ["dx"], ["adx"]),
            n("Div", ["adx", const("scale", self.scale_[None, :])], ["dev0"]),
            n("IsNaN", ["dev0"], ["dev_nan"]),
            n("Where", ["dev_nan", const("zero", [[0.0]]), "dev0"], ["feature_deviation"]),
            n("Gather", ["feature_deviation", "cols"], ["dev_a"], axis=1),
            n("ReduceMax", ["dev_a"], ["dev_max"], axes=[1], keepdims=1),
            n("Add", ["dev_max", const("one", [[1.0]])], ["dev_max1"]),
            n("Log", ["dev_max1"], ["rob"]),
            # anomaly = 0.5 (iso - mi)/si + 0.5 (rob - mr)/sr
            n("Sub", ["iso", const("mi", [[mi]])], ["iso_c"]),
            n("Mul", ["iso_c", const("wi", [[0.5 / si]])], ["iso_s"]),
            n("Sub", ["rob", const("mr", [[mr]])], ["rob_c"]),
            n("Mul", ["rob_c", const("wr", [[0.5 / sr]])], ["rob_s"]),
            n("Add", ["iso_s", "rob_s"], ["anomaly_score"]),
            # threat = (z - ml)/sl + anomaly ; level = 1 + #(threat > thresholds)
            n("Sub", ["z", const("ml", [[ml]])], ["z_c"]),
            n("Mul", ["z_c", const("wl", [[1.0 / sl]])], ["z_s"]),
            n("Add", ["z_s", "anomaly_score"], ["threat"]),
            n("Greater", ["threat", const("thr", self.thresholds_[None, :])], ["above"]),
            n("Cast", ["above"], ["above_f"], to=TensorProto.FLOAT),
            n("ReduceSum", ["above_f", const("axis1", [1], np.int64)], ["n_above"], keepdims=1),
            n("Add", ["n_above", "one"], ["threat_level"]),
        ]
        graph = helper.make_graph(
            head + nodes,
            "kairos_whale",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, input_shape)],
            [
                helper.make_tensor_value_info("whale_probability", TensorProto.FLOAT, [None, 1]),
                helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, [None, 1]),
                helper.make_tensor_value_info("threat_level", TensorProto.FLOAT, [None, 1]),
                helper.make_tensor_value_info("feature_deviation", TensorProto.FLOAT, [None, F]),
            ],
            initializer=inits,
        )
        opsets[""] = max(opsets.get("", 0), 13)
        opsets["ai.onnx.ml"] = max(opsets.get("ai.onnx.ml", 0), 1)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
            producer_name="kairos",
        )
        model.ir_version = part.ir_version
        check_self_contained(model)
        return model.SerializeToString()
