"""Log one training as one MLflow run, and register its serving bundle as a model version.

Run layout (artifacts):
    bundle/model.onnx, bundle/manifest.json   the serving bundle, and nothing else in bundle/
    newest_window.npz                         open_times (int64 ms), predictions, actuals (n, H), baseline_<who>
    report.json                               nested report, summary metrics, gates, data window
    feature_names.json
    calibration.png, coverage.png, curves.json   the run's curves (when the flow passes `figures`)
The model version's source is the run's `bundle` artifact directory (its resolved URI, as MLflow's
own `register_model` stores it), so the version's artifacts are exactly the bundle. MLflow 3.17's
`create_model_version(name, source, run_id)` accepts a plain artifact directory without a
LoggedModel (`model_id` stays None); the MLflow UI shows the version with its source run.
`mlflow.onnx.log_model` is not used: it adds MLmodel/conda files and writes external `.data` weights.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from onnx.external_data_helper import uses_external_data
from pydantic import BaseModel

from pipelines.contracts.bundle import MANIFEST_FILE, MODEL_FILE, BundleError, write_bundle
from pipelines.contracts.faults import checkpoint
from pipelines.contracts.newest_window import NewestWindow
from registry.client import RegisteredVersion, RegistryError, ensure_experiment, model_name

if TYPE_CHECKING:  # annotation only: the registry reads the result's fields, it imports no training code
    from pipelines.training.walk_forward import TrainResult

__all__ = ["RegisteredVersion", "log_training", "BUNDLE_PATH"]

BUNDLE_PATH = "bundle"
_BATCH = 100  # MLflow log_batch accepts at most 100 params/tags and 1000 metrics per call
_MAX_PARAM = 6000  # chars per param value


def _check_self_contained(onnx_bytes: bytes) -> None:
    model = onnx.load_model_from_string(onnx_bytes)
    external = [t.name for t in model.graph.initializer if uses_external_data(t)]
    if external:
        raise BundleError(
            f"model.onnx refers to external weight files ({external[:3]}...); export with all tensors inline"
        )


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = json.dumps(value, default=str) if isinstance(value, (list, tuple)) else str(value)
        out[prefix] = text[:_MAX_PARAM]


def _fmt_acc(acc: float) -> str:
    return "nan" if not np.isfinite(acc) else f"{acc:.6f}"


def _log_batches(client: MlflowClient, run_id: str, params: dict[str, str], metrics: list[Metric]) -> None:
    plist = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(plist), _BATCH):
        client.log_batch(run_id, params=plist[i : i + _BATCH])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def _write_extras(
    directory: Path, result: TrainResult, metric: str, newest: dict[int, tuple[float, int]]
) -> None:
    nw = result.newest_window
    np.savez(
        directory / "newest_window.npz",
        open_times=np.asarray(nw.open_times, dtype=np.int64),
        **{f"baseline_{who}": np.asarray(b) for who, b in nw.baselines.items()},
        predictions=np.asarray(nw.predictions),
        actuals=np.asarray(nw.actuals),
        horizons=np.asarray(result.horizons, dtype=np.int64),
    )
    report = {
        "model_type": result.model_type,
        "symbol": result.symbol,
        "interval": result.interval,
        "data_window": result.data_window,
        "gates": result.gates,
        "parity_max_abs": result.parity_max_abs,
        "summary_metrics": result.summary_metrics,
        "fold_metrics": result.fold_metrics,
        "task": result.task,
        f"newest_window_{metric}": {f"h{h}": {metric: a, "rows": n} for h, (a, n) in newest.items()},
        "report": result.report,
        "synthetic": result.manifest.synthetic,
    }
    (directory / "report.json").write_text(json.dumps(report, indent=2, default=str, allow_nan=True))
    (directory / "feature_names.json").write_text(json.dumps(result.feature_names))


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        description = f"Kairos model {name}: serving bundle = model.onnx + manifest.json"
        client.create_registered_model(name, description=description)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def log_training(
    client: MlflowClient,
    result: TrainResult,
    *,
    experiment: str = "kairos-training",
    tags: dict[str, str] | None = None,
    config: BaseModel | dict | None = None,
    task: str | None = None,
    figures: dict[str, bytes] | None = None,
) -> RegisteredVersion:
    """Log `result` as one run and register its bundle as a new version of `<task>-<SYMBOL>-<interval>`.

    Args:
        client: from `registry.client.make_client`.
        result: the training outcome (bundle bytes, manifest, metrics, newest window, gates).
        experiment: MLflow experiment name (created under the artifacts root if missing).
        tags: extra run tags (e.g. {"trigger": "schedule"}).
        config: the training config, logged flat as `cfg.*` params.
        task: registered-model task prefix (default: the result's task).
        figures: extra run artifacts `{file name: bytes}` (the calibration / coverage curves).

    Returns:
        The new version (name, version, run_id).
    """
    _check_self_contained(result.onnx_bytes)
    name = model_name(result.symbol, result.interval, task or result.task)
    synthetic = bool(result.manifest.synthetic)
    metric, newest = result.newest_metric, result.newest_scores  # {h: (promotion metric, rows)}
    data = result.data_window
    exp_id = ensure_experiment(client, experiment)
    run_name = f"{result.model_type}-{result.symbol}-{result.interval}-{str(data.get('end', ''))[:16]}"
    run_tags = {
        "kairos.kind": "training",
        "task": result.task,
        "model_type": result.model_type,
        "symbol": result.symbol,
        "interval": result.interval,
        "registered_model": name,
        "synthetic": str(synthetic).lower(),
        "data_hash": str(data.get("data_hash", "")),
        "code_version": result.manifest.code_version,
        **{f"gate.{g}": "passed" if ok else "failed" for g, ok in result.gates.items()},
        BELOW_BASELINES_TAG: ",".join(str(h) for h in sorted(result.below_baselines)) or "none",
        BELOW_BASELINES_TAG + "_why": json.dumps({str(h): w for h, w in result.below_baselines.items()}),
        **(tags or {}),
    }
    params: dict[str, str] = {}
    _flatten("", result.params, params)
    _flatten("data", {k: v for k, v in data.items()}, params)
    _flatten("cfg", config or {}, params)
    params.update(
        model_type=result.model_type,
        feature_set=result.manifest.feature_set.name,
        feature_set_version=str(result.manifest.feature_set.version),
        n_features=str(len(result.feature_names)),
        horizons=json.dumps(list(result.horizons)),
        code_version=result.manifest.code_version,
    )
    names = json.dumps(result.feature_names)
    if len(names) <= _MAX_PARAM:
        params["feature_names"] = names
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"fold.{k}", float(v), now, i)
        for i, fold in enumerate(result.fold_metrics)
        for k, v in fold.items()
    ]
    metrics += [Metric(k, float(v), now, 0) for k, v in result.summary_metrics.items()]
    metrics.append(Metric("parity_max_abs", float(result.parity_max_abs), now, 0))
    for h, (acc, n) in newest.items():
        metrics.append(Metric(f"newest.h{h}.{metric}", acc, now, 0))
        metrics.append(Metric(f"newest.h{h}.rows", float(n), now, 0))

    run = client.create_run(exp_id, run_name=run_name, tags=run_tags)
    run_id = run.info.run_id
    try:
        _log_batches(client, run_id, params, metrics)
        with tempfile.TemporaryDirectory(prefix="kairos-run-") as tmp:
            bundle_dir = write_bundle(Path(tmp) / BUNDLE_PATH, result.onnx_bytes, result.manifest)
            # One file at a time, the manifest last; a crash in between leaves a run whose bundle lacks
            # its manifest, and no version: the version is created only after the whole bundle is stored.
            client.log_artifact(run_id, str(bundle_dir / MODEL_FILE), BUNDLE_PATH)
            checkpoint("during-export")  # crash tests only (pipelines.contracts.faults); a no-op otherwise
            client.log_artifact(run_id, str(bundle_dir / MANIFEST_FILE), BUNDLE_PATH)
            extras = Path(tmp) / "extras"
            extras.mkdir()
            _write_extras(extras, result, metric, newest)
            for fname, content in (figures or {}).items():
                (extras / Path(fname).name).write_bytes(content)
            client.log_artifacts(run_id, str(extras))
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    _ensure_registered_model(client, name)
    source = f"{run.info.artifact_uri.rstrip('/')}/{BUNDLE_PATH}"
    version_tags = {
        "model_type": result.model_type,
        "data_hash": str(data.get("data_hash", "")),
        "data_end": str(data.get("end", "")),
        "synthetic": str(synthetic).lower(),
        "code_version": result.manifest.code_version,
        "parity_max_abs": f"{result.parity_max_abs:.3g}",
        "task": result.task,
        **{f"newest_window.h{h}.{metric}": _fmt_acc(acc) for h, (acc, _) in newest.items()},
        "newest_window.rows": str(next(iter(newest.values()))[1] if newest else 0),
    }
    try:
        mv = client.create_model_version(name, source, run_id=run_id, tags=version_tags, description=run_name)
    except MlflowException as e:
        raise RegistryError(f"could not register {name} from run {run_id}: {e.message}") from None
    return RegisteredVersion(name=name, version=str(mv.version), run_id=run_id)


def load_newest_window(client: MlflowClient, name: str, version: str) -> NewestWindow:
    """The newest-window predictions a version's training run logged (for `kairos promote`)."""
    mv = client.get_model_version(name, str(version))
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(mv.run_id, "newest_window.npz", tmp)
        with np.load(path) as z:
            return NewestWindow(
                open_times=z["open_times"].copy(),
                predictions=z["predictions"].copy(),
                actuals=z["actuals"].copy(),
                baselines={
                    k.removeprefix("baseline_"): z[k].copy() for k in z.files if k.startswith("baseline_")
                },
            )


BELOW_BASELINES_TAG = "kairos.below_baselines"  # horizons where walk-forward did not beat the best rule


def version_below_baselines(client: MlflowClient, name: str, version: str) -> dict[int, str] | None:
    """Horizons (→ reason) at which the version's walk-forward score did not beat the task's best naive
    baseline; None for a run logged before this verdict was recorded."""
    mv = client.get_model_version(name, str(version))
    run = client.get_run(mv.run_id)
    tag = run.data.tags.get(BELOW_BASELINES_TAG)
    if tag is None:
        return None
    if tag == "none":
        return {}
    reasons = json.loads(run.data.tags.get(BELOW_BASELINES_TAG + "_why", "{}"))
    return {int(h): reasons.get(h, f"h{h}") for h in tag.split(",")}


def version_gates(client: MlflowClient, name: str, version: str) -> dict[str, bool]:
    """Gate results (`gate.<name>` tags) of the training run behind a model version."""
    mv = client.get_model_version(name, str(version))
    tags = client.get_run(mv.run_id).data.tags
    return {k.removeprefix("gate."): v == "passed" for k, v in tags.items() if k.startswith("gate.")}
