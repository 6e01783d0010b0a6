"""Composed feature sets ("core27+ta"): names, versions, errors, config and manifest forms.

Each set's own tests (test_features_*.py) check stream == batch for the set and for core27+set.
"""

from __future__ import annotations

import pytest

from pipelines.config import FeatureConfig
from pipelines.features import (
    FeatureError,
    UnknownFeatureSet,
    composite_name,
    get_feature_set,
    known_feature_sets,
)


def test_composite_name_forms():
    assert composite_name("core27") == "core27"
    assert composite_name("core27, ta") == composite_name(["core27", "ta"]) == "core27+ta"
    with pytest.raises(UnknownFeatureSet, match="no feature set named"):
        composite_name(" , ")


def test_config_accepts_a_list_or_a_joined_name():
    assert FeatureConfig(feature_set=["core27", "ta"]).feature_set == "core27+ta"
    assert FeatureConfig(feature_set="core27,ta").feature_set == "core27+ta"
    assert FeatureConfig().feature_set == "core27"


def test_duplicate_names_are_rejected_with_the_sets_named():
    with pytest.raises(FeatureError, match="'open' is in both 'core27' and 'core27'"):
        get_feature_set("core27+core27")


def test_unknown_part_names_the_known_sets():
    with pytest.raises(UnknownFeatureSet) as e:
        get_feature_set("core27+nope")
    assert "nope" in str(e.value) and "core27" in str(e.value)


@pytest.mark.parametrize("other", [s for s in known_feature_sets() if s not in ("core27", "core18")])
def test_composite_spec_concatenates_names_and_records_versions(other):
    a, b = get_feature_set("core27"), get_feature_set(other)
    c = get_feature_set(f"core27+{other}")
    assert c.names == a.names + b.names
    assert c.warmup == max(a.warmup, b.warmup)
    assert dict(c.components) == {"core27": a.version, other: b.version}


def test_core18_is_core27_without_levels_in_batch_and_streaming():
    import numpy as np

    from pipelines.features import StreamingFeatures, compute_features
    from pipelines.features.core18 import LEVELS
    from pipelines.sources.binance_files import read_klines
    from tests.conftest import FIL_FILES

    candles = read_klines(FIL_FILES[0], "FILUSDT", "1m").iloc[:10_500].reset_index(drop=True)
    full, core18 = compute_features(candles, "core27"), compute_features(candles, "core18")
    assert not set(core18.columns) & set(LEVELS) and len(core18.columns) == 18
    np.testing.assert_array_equal(full[list(core18.columns)].to_numpy(), core18.to_numpy())
    assert get_feature_set("core18").warmup == get_feature_set("core27").warmup
    sf = StreamingFeatures("core18", interval_ms=60_000)
    recs = candles.assign(open_time=candles["open_time"].astype("int64") // 10**6).to_dict("records")
    rows = np.array([sf.update(r) for r in recs])
    np.testing.assert_array_equal(rows, core18.to_numpy())  # NaN in the same places too
