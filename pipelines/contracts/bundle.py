"""The serving bundle contract (docs/architecture.md): `model.onnx` (self-contained) + `manifest.json`.

Pure stdlib + json: the serving runtime reads bundles with this module and nothing else from
training. A bundle directory holds exactly these two files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.contracts.errors import KairosError

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class BundleError(KairosError):
    """A bundle is missing a file, has an unreadable manifest, or violates the contract."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | None]  # None = dynamic batch dimension
    dtype: str = "float32"


@dataclass(frozen=True)
class OutputSpec(TensorSpec):
    horizons: list[int] = field(default_factory=list)
    meaning: str = ""
    # The value's sign is a direction call (returns). None = not recorded: bundles written before tasks
    # existed are all returns models, so `Manifest.signed` falls back to task == "returns".
    signed: bool | None = None


@dataclass(frozen=True)
class FeatureSetSpec:
    name: str
    version: int
    names: list[str]
    warmup: int  # candles of history needed before the features are exact
    components: dict[str, int] = field(default_factory=dict)  # a composite "core27+ta": part → version
    # fitted parts' parameters (e.g. risk's HMM), fitted on the final training window: serving passes
    # them to the feature code exactly as training did
    params: dict[str, Any] = field(default_factory=dict)
    # features that are NaN by design where an optional input is missing (whale19's book fields on a
    # kline feed); the model takes NaN there as "missing"
    nullable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    """Everything serving needs to know about a model, and what review needs to trace it."""

    task: str  # "returns", "volatility", ... (pipelines.tasks)
    model_name: str  # registered model name, e.g. "returns-FILUSDT-1m"
    model_type: str  # "lightgbm", "lstm_attention", "ensemble", ...
    symbol: str
    interval: str
    feature_set: FeatureSetSpec
    input: TensorSpec  # "features" float32 [N, F] or [N, T, F]
    outputs: list[
        OutputSpec
    ]  # first is the task's output float32 [N, H] ("returns", "log_variance"); optional "confidence"
    training: dict[str, Any]  # {"start", "end", "rows", "data_hash"}
    metrics: dict[str, Any]  # walk-forward summary metrics
    code_version: str
    created_at: str
    synthetic: bool = False  # trained on synthetic data (labelled everywhere it appears)
    extra: dict[str, Any] = field(default_factory=dict)
    # pipelines.contracts.profile.ReferenceProfile.to_dict(): the training distribution of every input
    # feature and output with the calibrated drift alarm; None in bundles written before it existed
    reference_profile: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def horizons(self) -> list[int]:
        return list(self.outputs[0].horizons)

    @property
    def signed(self) -> bool:
        """The first output's sign is a direction call (returns-like), so serving reports a direction."""
        s = self.outputs[0].signed
        return self.task == "returns" if s is None else bool(s)

    @property
    def sequence_length(self) -> int | None:
        return self.input.shape[1] if len(self.input.shape) == 3 else None

    def profile(self):
        """The reference profile (`pipelines.contracts.profile.ReferenceProfile`), or None if not recorded."""
        from pipelines.contracts.profile import ReferenceProfile

        return None if self.reference_profile is None else ReferenceProfile.from_dict(self.reference_profile)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        try:
            if d.get("schema_version") != SCHEMA_VERSION:
                raise BundleError(
                    f"manifest schema_version {d.get('schema_version')!r} is not supported; expected {SCHEMA_VERSION}"
                )
            d = dict(d)
            d["feature_set"] = FeatureSetSpec(**d["feature_set"])
            d["input"] = TensorSpec(**d["input"])
            d["outputs"] = [OutputSpec(**o) for o in d["outputs"]]
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise BundleError(f"manifest.json does not match the bundle contract: {e}") from None


def write_bundle(directory: Path, onnx_bytes: bytes, manifest: Manifest) -> Path:
    """Write `model.onnx` + `manifest.json` into `directory` (created); returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(onnx_bytes)
    (directory / MANIFEST_FILE).write_text(manifest.to_json())
    return directory


def read_bundle(directory: Path) -> tuple[bytes, Manifest]:
    """Read and check a bundle directory; raises BundleError naming what is wrong."""
    directory = Path(directory)
    model_path, manifest_path = directory / MODEL_FILE, directory / MANIFEST_FILE
    for p in (model_path, manifest_path):
        if not p.is_file():
            raise BundleError(f"bundle {directory} lacks {p.name}")
    extra = sorted(p.name for p in directory.iterdir() if p.name not in (MODEL_FILE, MANIFEST_FILE))
    if extra:
        raise BundleError(f"bundle {directory} is not self-contained: unexpected files {extra}")
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_text()))
    except json.JSONDecodeError as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    return model_path.read_bytes(), manifest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
