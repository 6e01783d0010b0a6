"""The model-family (`pipelines.models`) and source (`pipelines.sources`) registries: lookup by name,
typed configs from presets/options, and clear errors naming what exists."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from pipelines.config import LightGBMConfig, SequenceModelConfig, TrainingConfig
from pipelines.contracts.errors import ConfigError, SourceError
from pipelines.models import ModelContext, ModelSpecError, available_models, get_spec, make_model
from pipelines.sources import Source, available_sources, get_source
from tests.conftest import REPO

CONFIGS = REPO / "configs"
SHIPPED = ["ensemble", "lightgbm", "lstm_attention", "mamba", "tft", "transformer"]


# ---------------------------------------------------------------- model families
def test_every_shipped_family_is_found_by_name_from_its_config_file():
    assert available_models(CONFIGS) == SHIPPED
    for name in SHIPPED:
        spec = get_spec(name, CONFIGS)
        assert spec.name == name and set(spec.tasks) >= {"returns", "volatility"}
        assert spec.input_kind == ("tabular" if name == "lightgbm" else "sequence")
        assert "l2" in spec.objectives


def test_importing_the_registry_pulls_in_neither_lightgbm_nor_torch():
    code = (
        "import sys; import pipelines.models as m; m.available_models(); "
        "print(sorted(k for k in ('lightgbm', 'torch') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_family_names_the_known_ones():
    with pytest.raises(
        ModelSpecError, match=r"unknown model 'xgboost'; known models: \['ensemble', 'lightgbm'"
    ):
        get_spec("xgboost", CONFIGS)
    with pytest.raises(ModelSpecError, match="unknown model '../etc'"):
        get_spec("../etc", CONFIGS)


def test_config_naming_a_module_without_spec_is_rejected(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "broken.yaml").write_text("module: pipelines.models.base\npresets: {a: {}}\n")
    (tmp_path / "models" / "ghost.yaml").write_text("module: tests.fixtures.no_such_module\n")
    with pytest.raises(
        ModelSpecError, match=r"pipelines.models.base must define SPEC = ModelSpec\(name='broken'"
    ):
        get_spec("broken", tmp_path)
    with pytest.raises(ModelSpecError, match="unknown model 'ghost'.*'broken', 'ghost'"):
        get_spec("ghost", tmp_path)
    (tmp_path / "models" / "typo.yaml").write_text("modul: x\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown keys \['modul'\]"):
        get_spec("typo", tmp_path)


def test_lightgbm_without_flags_is_the_defaults_block_and_presets_go_on_top():
    cfg = TrainingConfig(lightgbm=LightGBMConfig(num_leaves=9, learning_rate=0.2))
    plain = make_model("lightgbm", cfg, 4, [1, 2], configs_dir=CONFIGS)
    assert plain.cfg == cfg.lightgbm
    fast = make_model("lightgbm", cfg, 4, [1, 2], preset="fast", overrides={"seed": 3}, configs_dir=CONFIGS)
    assert (fast.cfg.n_estimators, fast.cfg.num_leaves, fast.cfg.learning_rate, fast.cfg.seed) == (
        60,
        15,
        0.2,
        3,
    )
    with pytest.raises(ConfigError, match=r"lightgbm.yaml: no preset 'huge'; available: \['fast'\]"):
        make_model("lightgbm", cfg, 4, [1], preset="huge", configs_dir=CONFIGS)
    with pytest.raises(ConfigError, match="num_leaves"):
        make_model("lightgbm", cfg, 4, [1], overrides={"num_leaves": 1}, configs_dir=CONFIGS)


def test_sequence_presets_and_the_task_objective():
    spec = get_spec("mamba", CONFIGS)
    ctx = ModelContext(TrainingConfig(), CONFIGS)
    assert set(spec.presets(CONFIGS)) == {"small", "small_prev", "tiny"}
    tiny = spec.config(ctx, "tiny", {"max_epochs": 1})
    assert isinstance(tiny, SequenceModelConfig) and (tiny.d_model, tiny.max_epochs) == (16, 1)
    assert (
        make_model("mamba", TrainingConfig(), 4, [1], preset="tiny", configs_dir=CONFIGS).config.loss == "mse"
    )
    huber = make_model(
        "mamba", TrainingConfig(), 4, [1], preset="tiny", objective="huber", configs_dir=CONFIGS
    )
    assert huber.config.loss == "huber"
    with pytest.raises(
        ModelSpecError,
        match=r"model mamba cannot train with objective 'quantile'; it supports \['l2', 'huber'\]",
    ):
        make_model("mamba", TrainingConfig(), 4, [1], objective="quantile", configs_dir=CONFIGS)
    tft = make_model(
        "tft", TrainingConfig(), 4, [1], preset="tiny", objective="quantile", configs_dir=CONFIGS
    )
    assert tft.config.loss == "quantile"
    ens = make_model(
        "ensemble", TrainingConfig(), 4, [1, 2], preset="tiny", objective="huber", configs_dir=CONFIGS
    )
    assert ens.sequence.config.loss == "huber" and ens.tabular.objective == "huber"


def test_task_support_is_checked(monkeypatch):
    from pipelines.models import REGISTERED

    spec = get_spec("lightgbm", CONFIGS)
    monkeypatch.setitem(
        REGISTERED,
        "returns_only",
        type(spec)(
            name="returns_only",
            factory=spec.factory,
            config_class=spec.config_class,
            input_kind="tabular",
            tasks=("returns",),
            base_config=spec.base_config,
        ),
    )
    assert make_model("returns_only", TrainingConfig(), 4, [1], task="returns", configs_dir=CONFIGS)
    with pytest.raises(
        ModelSpecError, match=r"returns_only does not support task 'volatility'; it supports \['returns'\]"
    ):
        make_model("returns_only", TrainingConfig(), 4, [1], task="volatility", configs_dir=CONFIGS)


def test_a_family_is_one_module_plus_one_config(tmp_path):
    """Dropping the toy's config into a configs directory is all it takes to make it a model."""
    assert "toy_ridge" not in available_models(CONFIGS)  # not shipped
    shutil.copytree(REPO / "tests" / "fixtures" / "configs" / "models", tmp_path / "models")
    assert "toy_ridge" in available_models(tmp_path)
    model = make_model("toy_ridge", TrainingConfig(), 3, [1, 2], preset="strong", configs_dir=tmp_path)
    assert model.config.alpha == 1000.0 and model.input_kind == "tabular"
    spec = get_spec("toy_ridge", tmp_path)
    assert spec.tunable_fields() == ["alpha"] and spec.pruning is None
    with pytest.raises(
        ModelSpecError, match=r"toy_ridge cannot train with objective 'huber'; it supports \['l2'\]"
    ):
        make_model("toy_ridge", TrainingConfig(), 3, [1], objective="huber", configs_dir=tmp_path)


# ---------------------------------------------------------------- sources
def test_every_source_is_one_module_found_by_name():
    assert available_sources() == ["binance-files", "ccxt", "synthetic", "trades"]
    src = get_source("synthetic", {"days": 1})
    assert isinstance(src, Source)


def test_unknown_source_and_bad_options_are_named():
    with pytest.raises(
        SourceError,
        match=r"unknown source 'kraken-ws'; known sources: \['binance-files', 'ccxt', 'synthetic', 'trades'\]",
    ):
        get_source("kraken-ws", {})
    with pytest.raises(
        SourceError,
        match=r"source 'synthetic' has no option 'dayz'; it takes \['days', 'params', 'seed', 'start'\]",
    ):
        get_source("synthetic", {"dayz": 3})
    with pytest.raises(SourceError, match=r"source 'synthetic': option days: .*greater than 0"):
        get_source("synthetic", {"days": -1})
    with pytest.raises(SourceError, match=r"source 'ccxt': option exchange: Field required"):
        get_source("ccxt", {"market": "FIL/USDT"})
    with pytest.raises(SourceError, match="no kline files given for FILUSDT 1m"):
        get_source("binance-files", {"paths": []}).fetch("FILUSDT", "1m")


def test_unset_options_count_as_not_given():
    """`kairos retrain` offers every source's options; the ones left unset (None, empty) are dropped."""
    src = get_source("synthetic", {"days": 1, "exchange": None, "market": None, "paths": []})
    assert src.config.days == 1


def test_synthetic_continues_after_the_last_stored_candle():
    src = get_source("synthetic", {"days": 1, "seed": 3})
    first = src.fetch("SYNTHUSDT", "1m", last_open_time=None)
    assert len(first) == 1440 and first["open_time"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")
    nxt = src.fetch("SYNTHUSDT", "5m", last_open_time=pd.Timestamp("2024-03-01 23:55", tz="UTC"))
    assert len(nxt) == 288 and nxt["open_time"].iloc[0] == pd.Timestamp("2024-03-02", tz="UTC")
    with pytest.raises(SourceError, match="unknown interval '7m'"):
        src.fetch("SYNTHUSDT", "7m")


def test_ccxt_needs_a_start_when_nothing_is_stored():
    src = get_source("ccxt", {"exchange": "binance", "market": "FIL/USDT"})
    with pytest.raises(SourceError, match="ccxt backfill needs --since"):
        src.fetch("FILUSDT", "1m", last_open_time=None)
