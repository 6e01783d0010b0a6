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


@pytest.mark.parametrize("other", [s for s in known_feature_sets() if s != "core27"])
def test_composite_spec_concatenates_names_and_records_versions(other):
    a, b = get_feature_set("core27"), get_feature_set(other)
    c = get_feature_set(f"core27+{other}")
    assert c.names == a.names + b.names
    assert c.warmup == max(a.warmup, b.warmup)
    assert dict(c.components) == {"core27": a.version, other: b.version}
