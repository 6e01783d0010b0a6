"""Small configs so flow and CLI tests train in seconds on CI's 2 cores."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "walk_forward": {"train_size": 3000, "test_size": 720, "step": 720, "purge": 5, "max_folds": 2, "window": 0},
    "lightgbm": {"n_estimators": 30, "num_leaves": 15, "min_child_samples": 100},
    "export": {"parity_rows": 1000},
}


def write_small_configs(dst: Path, **overrides: dict) -> Path:
    """Copy configs/ to `dst` with the walk-forward and LightGBM sizes shrunk."""
    shutil.copytree(REPO / "configs", dst, dirs_exist_ok=True)
    path = dst / "defaults.yaml"
    data = yaml.safe_load(path.read_text())
    for key, val in {**SMALL, **overrides}.items():
        data[key] = {**data.get(key, {}), **val}
    path.write_text(yaml.safe_dump(data))
    return dst
