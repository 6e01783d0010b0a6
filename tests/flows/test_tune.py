"""Tuning: search-space checks, time correctness, pruning on a planted bad region, best-params files,
kill-and-resume of a worker process, and `kairos tune` end to end (Prefect flow + MLflow).

Data are seeded synthetic candles with a strong planted signal (next return loads on this candle's
order flow), so good parameters score a clearly positive IC and the planted bad region of the space
(`min_child_samples` above half the fit rows: LightGBM cannot split, the forecast is constant and
has no IC) scores exactly "no skill".
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from pipelines.config import load_training_config
from pipelines.contracts.errors import ConfigError
from pipelines.tuning.objective import (
    NO_SKILL,
    Objective,
    TuningData,
    best_params_path,
    load_best_params,
    load_search_space,
    prepare_tuning_data,
    provenance_tags,
    redact_storage,
    write_best_params,
)
from tests.fixtures.flow_helpers import REPO, write_small_configs

WF = {"train_size": 2000, "test_size": 300, "step": 300, "purge": 5, "max_folds": 2, "window": 0}
BAD_FROM = 900  # min_child_samples above ~half the 1795 fit rows: no split possible
SPACE = {
    "model_type": "lightgbm",
    "metric": "ic",
    "horizon": 1,
    "inner_folds": 2,
    "seed": 1,
    "n_startup_trials": 3,
    "pruner": {"kind": "median", "n_startup_trials": 2},
    "report_interval": 10,
    "heartbeat_interval": 1,
    "grace_period": 3,
    "params": {
        "num_leaves": {"type": "int", "low": 4, "high": 16},
        "n_estimators": {"type": "int", "low": 20, "high": 60, "step": 20},
        "min_child_samples": {"type": "int", "low": 20, "high": 3000, "log": True},
    },
}
GOOD = {"num_leaves": 8, "n_estimators": 40, "min_child_samples": 50}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def synthetic_candles(n: int = 3800, seed: int = 5):
    from pipelines.sources.synthetic import SynthParams, generate

    return generate("SYNTHUSDT", n=n, seed=seed, params=SynthParams(flow_kappa=0.5))


def tuning_configs(dst: Path, **space_overrides) -> Path:
    """configs/ with small walk-forward sizes and the test search space."""
    write_small_configs(dst, walk_forward=WF, lightgbm={"num_threads": 1})
    (dst / "search_spaces" / "lightgbm.yaml").write_text(yaml.safe_dump({**SPACE, **space_overrides}))
    return dst


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    return tuning_configs(tmp_path_factory.mktemp("tune") / "configs")


@pytest.fixture(scope="module")
def data(configs) -> TuningData:
    return prepare_tuning_data(synthetic_candles(), load_training_config(configs))


def worker_env(configs: Path, home: Path) -> dict[str, str]:
    env = {**os.environ, "KAIROS_CONFIGS_DIR": str(configs), "KAIROS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


# ---------------------------------------------------------------- search spaces
def test_shipped_search_spaces_parse():
    configs = REPO / "configs"
    for path in sorted((configs / "search_spaces").glob("*.yaml")):
        t = load_search_space(configs, path.stem)
        assert t.params and t.model_type == path.stem


@pytest.mark.parametrize(
    "param, spec, named",
    [
        ("num_leaves", {"type": "int", "low": 1, "high": 64}, "num_leaves: low=1"),  # LightGBMConfig: ge=2
        ("subsample", {"type": "float", "low": 0.5, "high": 1.5}, "subsample: high=1.5"),  # le=1
        ("leaves", {"type": "int", "low": 2, "high": 64}, "params.leaves: not a tunable field"),
        ("num_threads", {"type": "int", "low": 1, "high": 4}, "params.num_threads: not a tunable field"),
        ("learning_rate", {"type": "float", "low": 0.0, "high": 0.1, "log": True}, "learning_rate"),
        ("num_leaves", {"type": "int", "low": 64, "high": 8}, "num_leaves"),
        ("num_leaves", {"type": "categorical", "choices": []}, "num_leaves"),
    ],
)
def test_bad_search_space_is_rejected_naming_the_parameter(tmp_path, param, spec, named):
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "lightgbm.yaml").write_text(yaml.safe_dump({"params": {param: spec}}))
    with pytest.raises(ConfigError) as e:
        load_search_space(tmp_path, "lightgbm")
    assert named in str(e.value)
    assert "lightgbm.yaml" in str(e.value)


def test_missing_search_space_names_the_available_ones(tmp_path):
    with pytest.raises(ConfigError, match="no search space for model 'nope'.*available: \\['lightgbm'"):
        load_search_space(REPO / "configs", "nope")


# ---------------------------------------------------------------- time correctness
def test_final_test_window_is_cut_off_and_never_read(configs):
    """Tuning rows stop purge + test_size rows before the end; changing every candle of the final test
    window (and after) leaves the tuning rows bit-identical, so no feature or label reads it."""
    cfg = load_training_config(configs)
    candles = synthetic_candles()
    data = prepare_tuning_data(candles, cfg)
    n_label_rows = len(candles) - max(cfg.labels.horizons)  # `end`; window=0 keeps every row after warm-up
    first_test_candle = n_label_rows - WF["test_size"]
    assert data.held_out_from_ms == candles["open_time"].iloc[first_test_candle - WF["purge"]].value // 10**6
    assert data.open_time_ms[-1] < data.held_out_from_ms

    changed = candles.copy()
    rows = changed.index >= first_test_candle
    for col in ("open", "high", "low", "close"):
        changed.loc[rows, col] = changed.loc[rows, col] * 1.5
    changed.loc[rows, "volume"] = changed.loc[rows, "volume"] * 3
    again = prepare_tuning_data(changed, cfg)
    np.testing.assert_array_equal(again.X, data.X)
    np.testing.assert_array_equal(again.Y, data.Y)


# ---------------------------------------------------------------- the objective and pruning
def test_pruner_prunes_the_planted_bad_region(configs, data):
    cfg, tuning = load_training_config(configs), load_search_space(configs, "lightgbm")
    objective = Objective(data, cfg, tuning, interval="1m", threads=1)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=6),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    )
    study.enqueue_trial(GOOD)
    study.enqueue_trial({**GOOD, "num_leaves": 12})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=14)

    good = study.trials[0]
    assert good.value > 0.05, "the planted signal should give a clearly positive IC"
    assert len(good.user_attrs["fold_scores"]) == tuning.inner_folds
    bad = [t for t in study.trials[2:] if t.params["min_child_samples"] > BAD_FROM]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    print(f"\npruned {len(pruned)} of {len(study.trials)} trials; {len(bad)} landed in the bad region")
    assert bad, "the seeded sampler should visit the bad region"
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in bad)
    # pruned inside the first fold, by the LightGBM callback (steps < STEPS_PER_FOLD)
    assert all(max(t.intermediate_values) < 100_000 for t in bad)
    assert study.best_trial.params["min_child_samples"] <= BAD_FROM


def test_constant_forecast_scores_no_skill(configs, data):
    cfg, tuning = load_training_config(configs), load_search_space(configs, "lightgbm")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.enqueue_trial({**GOOD, "min_child_samples": 3000})
    study.optimize(Objective(data, cfg, tuning, interval="1m", threads=1), n_trials=1)
    assert study.trials[0].user_attrs["fold_scores"] == [NO_SKILL["ic"]] * tuning.inner_folds


# ---------------------------------------------------------------- best params on disk
def test_best_params_round_trip_without_password(tmp_path):
    assert load_best_params(tmp_path, "lightgbm", "FILUSDT", "1m") is None
    prov = {
        "study_name": "s",
        "storage": "postgresql://kairos:s3cret@db:5432/optuna",
        "trial_number": 7,
        "value": 0.52,
        "metric": "accuracy",
        "time": "2024-01-01T00:00:00+00:00",
    }
    path = write_best_params(tmp_path, "lightgbm", "FILUSDT", "1m", {"lightgbm": {"num_leaves": 63}}, prov)
    assert (
        path
        == best_params_path(tmp_path, "lightgbm", "FILUSDT", "1m")
        == tmp_path / "tuned" / "lightgbm-FILUSDT-1m.yaml"
    )
    assert "s3cret" not in path.read_text()
    overrides, got = load_best_params(tmp_path, "lightgbm", "FILUSDT", "1m")
    assert overrides == {"lightgbm": {"num_leaves": 63}}
    assert got["trial_number"] == 7 and got["storage"] == "postgresql://kairos:***@db:5432/optuna"
    assert load_training_config(REPO / "configs", overrides).lightgbm.num_leaves == 63
    assert provenance_tags(got)["kairos.tuned.trial_number"] == "7"
    assert redact_storage("sqlite:////x/optuna.db") == "sqlite:////x/optuna.db"

    path.write_text("overrides: [1, 2]\n")
    with pytest.raises(ConfigError, match="not a tuned-parameters file"):
        load_best_params(tmp_path, "lightgbm", "FILUSDT", "1m")


# ---------------------------------------------------------------- kill and resume
def _trials(storage_url: str, study: str) -> list:
    try:
        return optuna.load_study(study_name=study, storage=storage_url).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def test_killed_worker_resumes_without_losing_or_duplicating_trials(configs, data, tmp_path):
    from pipelines.tuning.study import worker_command

    n, url = 6, f"sqlite:///{tmp_path / 'optuna.db'}"
    # Trials long enough to be caught running: 300-500 trees take ~0.3 s (40 take ~0.03 s, and a worker
    # can then finish its whole budget between two polls).
    trees = {"type": "int", "low": 300, "high": 500, "step": 100}
    env = worker_env(
        tuning_configs(tmp_path / "configs", params={**SPACE["params"], "n_estimators": trees}),
        tmp_path / "home",
    )
    rows = data.save(tmp_path / "rows.npz")
    # The kill must land inside a trial. A trial can finish between our read and the SIGKILL, so a
    # miss is retried on a fresh study (the miss itself proves nothing either way).
    for attempt in range(4):
        name = f"kill-resume-{attempt}"
        cmd = worker_command(
            study=name,
            storage=url,
            model="lightgbm",
            symbol="SYNTHUSDT",
            interval="1m",
            trials=n,
            worker_index=0,
            threads=1,
            data=rows,
        )
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:  # kill once 2 trials finished and a third is mid-run
            states = [t.state for t in _trials(url, name)]
            if sum(s in FINISHED for s in states) >= 2 and optuna.trial.TrialState.RUNNING in states:
                break
            if proc.poll() is not None:  # the whole budget ran between two polls: a miss
                assert proc.returncode == 0, proc.stdout.read().decode()
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = [t.number for t in _trials(url, name) if t.state == optuna.trial.TrialState.RUNNING]
        if killed:
            break
    assert len(killed) == 1, "no attempt killed the worker inside a trial"

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = _trials(url, name)
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # distinct and consecutive: none lost, none duplicated
    assert sum(t.state in FINISHED for t in trials) == n
    by_state = {t.number: t.state for t in trials}
    assert by_state[killed[0]] == optuna.trial.TrialState.FAIL  # the stale RUNNING trial was handled
    assert sum(s == optuna.trial.TrialState.FAIL for s in by_state.values()) == 1
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retried) == 1
    # Its parameters were re-run. The kill can land between two suggest calls, so the killed trial may hold
    # only the first few; the retry re-uses those and samples the rest.
    assert trials[killed[0]].params.items() <= retried[0].params.items()
    assert (
        len({frozenset(t.params) for t in trials if t.state in FINISHED}) == 1
    )  # every finished trial is whole


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trial_killed_before_its_first_heartbeat_is_failed_and_retried(configs, data, tmp_path):
    """A worker killed between `study.ask()` and its first heartbeat leaves a RUNNING trial with no
    heartbeat row, which Optuna never calls stale. Found in CI: the resumed worker waited for it forever."""
    from pipelines.config import TuningConfig
    from pipelines.tuning.study import make_storage, worker_command

    n, url, name = 4, f"sqlite:///{tmp_path / 'optuna.db'}", "orphan"
    tuning = TuningConfig.model_validate(SPACE)
    study = optuna.create_study(storage=make_storage(url, tuning), study_name=name, direction="maximize")
    orphan = study.ask()  # RUNNING, no heartbeat: what the kill leaves behind
    orphan.suggest_int("num_leaves", 4, 16)
    cmd = worker_command(
        study=name,
        storage=url,
        model="lightgbm",
        symbol="SYNTHUSDT",
        interval="1m",
        trials=n,
        worker_index=0,
        threads=1,
        data=data.save(tmp_path / "rows.npz"),
    )
    out = subprocess.run(
        cmd, cwd=REPO, env=worker_env(configs, tmp_path / "home"), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    trials = _trials(url, name)
    assert trials[0].state == optuna.trial.TrialState.FAIL  # failed once the grace period had passed
    assert sum(t.state in FINISHED for t in trials) == n
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params["num_leaves"] == orphan.params["num_leaves"]


# ---------------------------------------------------------------- the CLI, the flow and MLflow
@pytest.fixture()
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_tune_cli_registers_the_command():
    from flows.cli import app

    cmd = next(c for c in app.registered_commands if (c.name or c.callback.__name__) == "tune")
    opts = {p.name for p in __import__("inspect").signature(cmd.callback).parameters.values()}
    assert {"symbol", "model", "trials", "workers", "storage", "interval"} <= opts


def test_tune_flow_resumes_writes_best_params_and_logs_the_study(kairos_home, tmp_path, monkeypatch, harness):
    from flows.runtime import Runtime
    from flows.tune import tune
    from pipelines.contracts.settings import get_settings

    monkeypatch.setenv(
        "KAIROS_CONFIGS_DIR",
        str(tuning_configs(tmp_path / "configs", grace_period=30, heartbeat_interval=10)),
    )
    get_settings.cache_clear()
    Runtime.from_env().store().upsert(synthetic_candles())
    first = tune("SYNTHUSDT", "lightgbm", n_trials=4)
    assert first["trials_run"] == 4 and first["counts"].get("COMPLETE", 0) >= 1
    second = tune("SYNTHUSDT", "lightgbm", n_trials=6)  # same study: resumes, runs only the missing trials
    assert second["trials_run"] == 2
    print(f"\npruned {second['counts'].get('PRUNED', 0)} of 6 trials")

    overrides, prov = load_best_params(kairos_home, "lightgbm", "SYNTHUSDT", "1m")
    assert set(overrides["lightgbm"]) == set(SPACE["params"])
    assert prov["study_name"] == "lightgbm-SYNTHUSDT-1m" and prov["metric"] == "ic"
    study = optuna.load_study(
        study_name="lightgbm-SYNTHUSDT-1m", storage=f"sqlite:///{kairos_home.resolve()}/optuna.db"
    )
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == 6 and prov["trial_number"] == study.best_trial.number

    client = Runtime.from_env().mlflow
    exp = client.get_experiment_by_name("kairos-tuning")
    parents = client.search_runs(
        [exp.experiment_id],
        "tags.`kairos.study` = 'lightgbm-SYNTHUSDT-1m' "
        "and attributes.run_name = 'study-lightgbm-SYNTHUSDT-1m'",
    )
    assert len(parents) == 1  # one parent per study, reused on resume
    parent = parents[0]
    nested = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(int(r.data.tags["kairos.trial_number"]) for r in nested) == [t.number for t in study.trials]
    assert {r.data.tags["optuna.state"] for r in nested} <= {"COMPLETE", "PRUNED"}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "optimization_history.png",
        "param_importances.png",
        "lightgbm.yaml",
        "lightgbm-SYNTHUSDT-1m.yaml",
    } <= artifacts
    assert parent.data.tags["kairos.best_trial"] == str(study.best_trial.number)


def test_lightning_pruning_callback_prunes_a_deep_model_inside_a_fold():
    """Deep models take Optuna's Lightning pruning callback: an unpromising trial stops mid-fit."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from pipelines.models.sequence import make_sequence_model
    from pipelines.tuning.objective import STEPS_PER_FOLD, _FoldTrial

    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 60, 4)).astype(np.float32)
    Y = rng.standard_normal((600, 2)) * 1e-3
    # every reported value (−val_loss < 0) is below the threshold → pruned at the first epoch's report
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.0))
    trial = study.ask()
    model = make_sequence_model("lstm_attention", 4, [1, 2], preset="tiny", overrides={"max_epochs": 3})
    cb = PyTorchLightningPruningCallback(_FoldTrial(trial, 1, -1.0), "val_loss")
    with pytest.raises(optuna.TrialPruned):
        model.fit(X[:500], Y[:500], X_val=X[500:], Y_val=Y[500:], callbacks=[cb])
    frozen = study._storage.get_trial(trial._trial_id)
    steps = sorted(frozen.intermediate_values)
    assert steps == [STEPS_PER_FOLD * 1], steps  # fold 1's block, epoch 0: stopped after one report
    assert frozen.intermediate_values[steps[0]] < 0


def test_tune_volatility_scores_the_task_metric_and_keeps_its_params_apart(
    kairos_home, tmp_path, monkeypatch, harness
):
    """`kairos tune --task volatility`: labels, metric (-QLIKE) and horizon (the policy's, 15) come from the task;
    study and tuned-params file carry the task, so the returns study of the same model is untouched."""
    from flows.runtime import Runtime
    from flows.tune import tune
    from pipelines.contracts.settings import get_settings

    configs = tuning_configs(tmp_path / "configs")
    space = {k: v for k, v in SPACE.items() if k not in ("metric", "horizon")}
    (configs / "search_spaces" / "lightgbm.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.setenv("KAIROS_CONFIGS_DIR", str(configs))
    get_settings.cache_clear()
    Runtime.from_env().store().upsert(synthetic_candles(n=6000))
    out = tune("SYNTHUSDT", "lightgbm", n_trials=3, task="volatility")
    assert out["study_name"] == "volatility-lightgbm-SYNTHUSDT-1m" and out["trials_run"] == 3
    assert (out["metric"], out["horizon"]) == ("neg_qlike", 15) and out["best_value"] < 0
    assert (
        load_best_params(kairos_home, "lightgbm", "SYNTHUSDT", "1m") is None
    )  # the returns file: not written
    overrides, prov = load_best_params(kairos_home, "lightgbm", "SYNTHUSDT", "1m", "volatility")
    assert set(overrides["lightgbm"]) == set(SPACE["params"]) and prov["metric"] == "neg_qlike"


def test_a_study_remembers_its_objective(tmp_path):
    """Resuming a study under another training objective would mix incomparable trials: refused."""
    from pipelines.config import TuningConfig
    from pipelines.tuning.objective import TuningError
    from pipelines.tuning.study import make_storage, open_study

    tuning = TuningConfig.model_validate(SPACE)
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", tuning)
    study = open_study(storage, "s", tuning, 0, {"objective": "huber"})
    assert study.user_attrs["objective"] == "huber"
    with pytest.raises(TuningError, match="objective='huber', not 'l2'"):
        open_study(storage, "s", tuning, 0, {"objective": "l2"})
