"""A new model family is one module + one config: the toy ridge family (tests/fixtures/toy_ridge.py +
tests/fixtures/configs/models/toy_ridge.yaml) trains walk-forward, exports (parity-gated), registers and
tunes through the ordinary code paths and the `kairos` command line, with no special case anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from tests.conftest import REPO
from tests.fixtures.flow_helpers import write_small_configs

TOY = REPO / "tests" / "fixtures" / "configs"


def toy_configs(dst: Path) -> Path:
    """Small configs plus the toy family's one config file and its search space (dropped in, nothing else)."""
    write_small_configs(dst)
    shutil.copy(TOY / "models" / "toy_ridge.yaml", dst / "models" / "toy_ridge.yaml")
    shutil.copy(TOY / "search_spaces" / "toy_ridge.yaml", dst / "search_spaces" / "toy_ridge.yaml")
    return dst


@pytest.fixture()
def configs(tmp_path, monkeypatch) -> Path:
    from pipelines.contracts.settings import get_settings

    path = toy_configs(tmp_path / "configs")
    monkeypatch.setenv("KAIROS_CONFIGS_DIR", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def synthetic(days: int = 5):
    from pipelines.sources.synthetic import generate

    return generate("SYNTHUSDT", n=days * 1440, seed=7)


def test_toy_family_trains_walk_forward_and_exports_with_parity(configs):
    from pipelines.config import load_training_config
    from pipelines.training.walk_forward import train_walk_forward
    from tests.fixtures.toy_ridge import ToyRidge
    from validation.parity import run_onnx

    cfg = load_training_config(configs)
    res = train_walk_forward(
        synthetic(), symbol="SYNTHUSDT", interval="1m", cfg=cfg, model_type="toy_ridge", synthetic=True
    )
    assert isinstance(res.model, ToyRidge) and res.model.config.alpha == 1.0  # the file's default preset
    assert res.gates == {"parity": True} and res.parity_max_abs <= 1e-5
    assert res.manifest.model_type == "toy_ridge" and res.manifest.input.shape == [None, 27]
    assert res.params["alpha"] == 1.0 and len(res.folds) == 2
    for who in ("model", "always_up", "persistence", "reversal"):  # judged beside the baselines, same rows
        assert res.summary_metrics[f"{who}.h1.n"] + res.summary_metrics[f"{who}.h1.n_flat"] == 1440
    X = np.random.default_rng(0).normal(size=(7, 27)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(res.onnx_bytes, X), res.model.predict(X), atol=1e-6)

    strong = train_walk_forward(
        synthetic(),
        symbol="SYNTHUSDT",
        interval="1m",
        cfg=cfg,
        model_type="toy_ridge",
        preset="strong",
        model_overrides={"alpha": 5000.0},
    )
    assert strong.model.config.alpha == 5000.0
    # a stronger penalty shrinks the coefficients
    assert np.abs(strong.model.W_).sum() < np.abs(res.model.W_).sum()


def test_toy_family_tunes_on_the_training_fit_path(configs):
    from pipelines.config import load_training_config
    from pipelines.tuning.objective import Objective, load_search_space, prepare_tuning_data

    cfg = load_training_config(configs, {"walk_forward": {"train_size": 2000, "test_size": 300, "step": 300}})
    tuning = load_search_space(configs, "toy_ridge")
    data = prepare_tuning_data(synthetic(), cfg)
    objective = Objective(data, cfg, tuning, interval="1m", threads=1, configs_dir=configs)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    study.enqueue_trial({"alpha": 1.0})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=3)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and len(trial.user_attrs["fold_scores"]) == 2
    # no in-fold pruning callbacks for this family: only the per-fold reports
    assert sorted(trial.intermediate_values) == [99_999, 199_999]

    # the tuner's fold fit is the training fit: same model, same rows (fit_fold), the tuned horizon only
    from pipelines.training.fit import fit_fold

    fold = objective.folds[-1]
    pred, actual = objective.fit_predict({"alpha": 1.0}, fold)
    direct = fit_fold(
        objective.model({"alpha": 1.0}),
        data.X,
        data.Y[:, :1],
        fold.train_start,
        fold.train_end,
        cfg.walk_forward.purge,
    )
    np.testing.assert_array_equal(pred, direct.predict(data.X[fold.test_start : fold.test_end])[:, 0])
    np.testing.assert_array_equal(actual, data.Y[fold.test_start : fold.test_end, 0])


def test_bad_toy_search_space_names_the_parameter(configs):
    from pipelines.contracts.errors import ConfigError
    from pipelines.tuning.objective import load_search_space

    path = configs / "search_spaces" / "toy_ridge.yaml"
    space = yaml.safe_load(path.read_text())
    space["params"] = {"alpha": {"type": "float", "low": -1.0, "high": 1.0}}
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError, match="params.alpha: low=-1.0 is not accepted"):
        load_search_space(configs, "toy_ridge")
    space["params"] = {"beta": {"type": "float", "low": 0.1, "high": 1.0}}
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(
        ConfigError, match=r"params.beta: not a tunable field of toy_ridge; tunable: \['alpha'\]"
    ):
        load_search_space(configs, "toy_ridge")


# ---------------------------------------------------------------- the ordinary command line
def _kairos(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    return out


@pytest.mark.slow
def test_toy_family_through_kairos_train_and_tune(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "PREFECT_", "MLFLOW_"))}
    env.update(
        KAIROS_HOME=str(tmp_path / "home"),
        KAIROS_CONFIGS_DIR=str(toy_configs(tmp_path / "configs")),
        COLUMNS="200",
    )
    _kairos(["ingest", "synthetic", "--symbol", "SYNTHUSDT", "--days", "5"], env)

    out = _kairos(["train", "--model", "toy_ridge", "--symbol", "SYNTHUSDT"], env)
    assert "registered returns-SYNTHUSDT-1m version 1" in out, out

    out = _kairos(["tune", "--model", "toy_ridge", "--symbol", "SYNTHUSDT", "--trials", "3"], env)
    assert "best parameters: alpha=" in out, out
    tuned = yaml.safe_load((tmp_path / "home" / "tuned" / "toy_ridge-SYNTHUSDT-1m.yaml").read_text())
    alpha = tuned["overrides"]["toy_ridge"]["alpha"]

    out = _kairos(["train", "--model", "toy_ridge", "--symbol", "SYNTHUSDT"], env)
    assert "registered returns-SYNTHUSDT-1m version 2" in out, out

    from pipelines.contracts.settings import get_settings
    from registry.client import make_client

    for key in ("KAIROS_HOME", "KAIROS_CONFIGS_DIR"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    s = get_settings()
    client = make_client(s.tracking_uri, s.artifacts_dir)
    v2 = client.get_model_version("returns-SYNTHUSDT-1m", "2")
    run = client.get_run(v2.run_id)
    assert float(run.data.params["alpha"]) == pytest.approx(
        alpha
    )  # the tuned value, applied like any family's
    assert run.data.tags["kairos.tuned.study_name"] == "toy_ridge-SYNTHUSDT-1m"
    get_settings.cache_clear()
