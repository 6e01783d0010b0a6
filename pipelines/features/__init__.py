"""Named, versioned feature sets: one implementation for training (batch) and serving (streaming).

A feature set is a *kernel* over a work matrix X (input series x candles) plus a small carried
state (the EMA/RSI recursions): `kernel(X, lo, hi, t0, state, out)` computes the features of
columns [lo, hi) from those columns and the `lags` columns before them. Batch runs it over a
whole history in chunks; `StreamingFeatures` runs it on one column of a preallocated ring buffer.
There is no second copy of any formula, and the two agree bit for bit (tests/unit/test_features.py).

A feature value is NaN until its window is full; for EMA/RSI "full" means the seed's weight has
decayed below 1e-16, so a non-NaN value does not depend on where its history started. `warmup` is
the number of candles after which every feature is defined: a serving window of `warmup` candles
gives the same values as the full history.

Imports only numpy (pandas lazily, when a frame is given or returned): the serving runtime reuses
this package without pandas, passing candles as a mapping of numpy arrays (`arrays_from_records`).
"""

from pipelines.features.base import (
    FeatureError,
    FeatureSet,
    UnknownFeatureSet,
    arrays_from_records,
    composite_name,
    compute_features,
    feature_matrix,
    fit_feature_params,
    get_feature_set,
    known_feature_sets,
)
from pipelines.features.streaming import StreamingFeatures

__all__ = [
    "FeatureError",
    "FeatureSet",
    "StreamingFeatures",
    "UnknownFeatureSet",
    "arrays_from_records",
    "composite_name",
    "compute_features",
    "feature_matrix",
    "fit_feature_params",
    "get_feature_set",
    "known_feature_sets",
]
