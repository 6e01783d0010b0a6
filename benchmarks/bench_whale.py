"""In-process whale inference, one candle at a time: whale19r streaming update + the whale bundle's ONNX
graph (classifier, Isolation Forest, robust score, threat level) — the `000_*` seed's < 500 µs.

    python benchmarks/bench_whale.py [--skip-transformer]

LightGBM: the detector is trained (pipelines.training.pooled.train_pooled) on 6 real pump windows of
../shared/data/pumps with configs/tasks/whale.yaml's model, then a 7th window is replayed candle by
candle: `StreamingFeatures.update` (p50/p99 per candle), the session run on that row (1 intra-op thread,
as serving runs it), and both together.
Transformer: the `000_*` seed's preset (`seed000`: 6 layers x 8 heads x width 256, T = 60) as the
classifier of the same detector, trained for 1 epoch on 4,000 windows of those windows (latency does not
depend on the weights' values); per candle the window of the last 60 feature rows is stacked and run.
Writes benchmarks/results/whale_inference.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PUMPS = REPO.parent / "shared" / "data" / "pumps"


def pct(ns: np.ndarray) -> dict[str, float]:
    us = np.asarray(ns) / 1e3
    return {
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
    }


def replay(onnx_bytes: bytes, feature_set: str, frame, seq_len: int | None = None) -> dict:
    """Per-candle timings of the streaming features and the graph over one replayed window."""
    from collections import deque

    from pipelines.contracts.onnx import make_session
    from pipelines.features import StreamingFeatures

    session = make_session(onnx_bytes)
    name_in = session.get_inputs()[0].name
    sf = StreamingFeatures(feature_set, interval_ms=60_000)
    ring: deque = deque(maxlen=seq_len or 1)
    t_feat, t_model, t_total, levels = [], [], [], []
    for i, rec in enumerate(frame.to_dict("records")):
        t0 = time.perf_counter_ns()
        x = np.asarray(sf.update(rec), np.float32)
        ring.append(x)
        t1 = time.perf_counter_ns()
        if i < sf.feature_set.warmup + (seq_len or 1) - 1:
            continue
        inp = np.stack(ring)[None] if seq_len else x[None, :]
        out = session.run(None, {name_in: inp})
        t2 = time.perf_counter_ns()
        t_feat.append(t1 - t0)
        t_model.append(t2 - t1)
        t_total.append(t2 - t0)
        levels.append(float(out[2][0, 0]))
    return {
        "candles_timed": len(t_total),
        "features": pct(t_feat),
        "model": pct(t_model),
        "total": pct(t_total),
        "onnx_kib": round(len(onnx_bytes) / 1024, 1),
        "levels_seen": {str(int(k)): int(v) for k, v in zip(*np.unique(levels, return_counts=True))},
    }


def transformer_detector(segs, fs_name: str, task):
    """The seed000 transformer as the whale detector's classifier, 1 epoch on 4,000 windows."""
    from pipelines.features import compute_features, get_feature_set
    from pipelines.models.whale import WhaleDetector, WhaleDetectorConfig

    fs = get_feature_set(fs_name)
    T = 60
    W, Y, G = [], [], []
    for g, seg in enumerate(segs):
        X = compute_features(seg.frame, fs_name)[list(fs.names)].to_numpy(np.float32)
        y = task.frame_labels(seg.frame)[:, 0]
        idx = np.arange(fs.warmup + T, len(X) - 15, 7)
        idx = idx[np.isfinite(y[idx])]
        W.append(X[idx[:, None] + np.arange(1 - T, 1)])
        Y.append(y[idx])
        G.append(np.full(idx.size, g))
    W, Y, G = np.concatenate(W)[:4000], np.concatenate(Y)[:4000], np.concatenate(G)[:4000]
    cfg = WhaleDetectorConfig(
        classifier="transformer",
        preset="seed000",
        sequence_overrides=(("max_epochs", 1), ("swa", False)),
        calibration_folds=2,
    )
    det = WhaleDetector(cfg, tuple(fs.names), tuple(fs.nullable)).fit(W, Y, G)
    return det, int(det.booster_.n_weights)


def main() -> None:
    import argparse

    from pipelines.config import load_training_config
    from pipelines.tasks import load_task
    from pipelines.training.pooled import segments_from_trade_files, train_pooled

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-transformer", action="store_true")
    args = ap.parse_args()

    files = sorted(PUMPS.glob("*.zip"))[:7]
    segs = segments_from_trade_files(files, PUMPS / "events.csv")
    cfg = load_training_config(REPO / "configs", None, "whale")
    task = load_task(REPO / "configs", "whale", cfg.labels.horizons)
    r = train_pooled(segs[:6], universe="BENCH", interval="1m", cfg=cfg, task=task, test_segments=2)
    result = {
        "what": "one candle: whale19r streaming update + the whale ONNX graph (classifier + Isolation Forest + "
        "robust score + threat level); 1 intra-op thread",
        "target_us": 500,
        "replayed_window": files[6].name,
        "lightgbm": {
            **replay(r.onnx_bytes, r.manifest.feature_set.name, segs[6].frame),
            "classifier_trees": r.params["n_estimators"],
            "iforest_trees": r.params["iforest_trees"],
        },
    }
    if not args.skip_transformer:
        det, weights = transformer_detector(segs[:6], r.manifest.feature_set.name, task)
        result["transformer_seed000"] = {
            **replay(det.to_onnx(), r.manifest.feature_set.name, segs[6].frame, seq_len=60),
            "weights": weights,
            "note": "trained 1 epoch on 4,000 windows: a latency measurement, not a usable model",
        }
    result["loadavg_1m"] = os.getloadavg()[0]
    dst = REPO / "benchmarks" / "results" / "whale_inference.json"
    dst.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
