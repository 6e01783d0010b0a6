"""Training throughput: windows/s of the Lightning training path vs a plain PyTorch loop (issue 17).

    .venv/bin/python benchmarks/bench_train_throughput.py [--families lstm_attention,transformer,tft,mamba]
        [--windows 2048] [--epochs 1] [--repeats 2] [--seed000-windows 256] [--modes a,b] [--no-compile]
        [--busy 6]   # the same, while 6 busy-loop processes load the 2 cores (a shared machine)

Per family (default preset, and transformer seed000 on a few windows), on real FILUSDT core27 windows
(T = 60, 5 horizons, the strided view training gets; a validation slice of 10 %, as in a fold):
- `plain`: the floor. The same network, AdamW, warm-up + cosine per step, gradient clipping, the same
  batches and one validation pass per epoch, in a bare loop (no Trainer, no callbacks, no logging);
- `lightning`: `SequenceRegressor.fit`, i.e. `base.train_network`, the path `kairos train` runs;
- `before`: the previous default preset (`<default>_prev` where it changed) as it ran before: 2 torch
  threads, float32, libgomp's default wait (idle OpenMP threads spin 300,000 rounds before sleeping);
- `spin`: `before` with GOMP_SPINCOUNT=1000 (what importing pipelines.models.sequence now sets);
  `passive`: `before` with OMP_WAIT_POLICY=PASSIVE (no spin), the alternative that was not kept;
- `spin + <change>`: ONE change on top of `spin`, so each change's effect is its own: windows as a
  contiguous copy instead of the strided view, a per-window DataLoader with default collation (what the
  index-list batches replaced), pinned memory on the CPU, 1 thread, bf16 autocast on the CPU,
  `torch.compile` of the network (compile time included), no per-step loss logging, a one-batch
  validation slice (= what validating costs);
- `after`: the default presets as they are now, Lightning and plain.

Every fit trains exactly `--epochs` epochs (patience above the epoch count) in a fresh worker process (the
OpenMP policy is read once, when torch loads). Rounds are interleaved over `--repeats`; reported are
windows per wall second (best round: the least disturbed by other processes), windows per CPU-second of
the worker (median; every thread's CPU time, `resource.getrusage`) and the 1-minute load average when the
fit started. A fit includes its fixed costs (Trainer set-up, first-batch allocations), so small
`--windows` favour the plain loop. Writes benchmarks/results/train_throughput.json and prints a markdown
table. Not part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.config import load_model_preset  # noqa: E402
from pipelines.contracts.settings import get_settings  # noqa: E402
from pipelines.models.sequence import base  # noqa: E402
from pipelines.models.sequence.base import SequenceRegressor, feature_scaling, warmup_cosine  # noqa: E402
from pipelines.models.sequence.losses import make_loss  # noqa: E402
from pipelines.models.sequence.net import SequenceNet  # noqa: E402

DATA = REPO.parent / "shared" / "data"
FAMILIES = ("lstm_attention", "transformer", "tft", "mamba")
HORIZONS = (1, 2, 3, 4, 5)
# The default presets before the throughput work (what `before` runs): 2 torch threads, float32.
BEFORE = {"num_threads": 2, "cpu_bf16": False}
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def real_rows(n_candles: int) -> tuple[np.ndarray, np.ndarray]:
    """FILUSDT core27 feature rows past warm-up (float32, contiguous) and their 5 log-return labels,
    aligned so that the window of rows [k, k + 60) has labels[k] (workers build the strided view)."""
    from pipelines.features import feature_matrix
    from pipelines.sources.binance_files import read_klines
    from pipelines.tasks.returns import make_labels

    path = sorted(DATA.glob("FILUSDT-1m-2023-*.zip"))[-1]
    candles = read_klines(path, "FILUSDT", "1m").iloc[:n_candles].reset_index(drop=True)
    X = np.ascontiguousarray(feature_matrix(candles, "core27"), dtype=np.float32)
    Y = make_labels(candles["close"].to_numpy(float), list(HORIZONS))
    ok = np.isfinite(X).all(axis=1) & np.isfinite(Y).all(axis=1)
    first, last = int(np.argmax(ok)), len(ok) - int(np.argmax(ok[::-1]))  # one finite block
    if not ok[first:last].all():
        raise SystemExit("unexpected non-finite rows inside the FILUSDT sample")
    return X[first:last], Y[first + 59 : last]


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- the floor --------------------------------------------------------------------------------------
def plain_fit(cfg: Any, W: np.ndarray, Y: np.ndarray, Wv: np.ndarray, Yv: np.ndarray) -> None:
    """`train_network`'s arithmetic in a bare loop: what Lightning should come close to."""
    with base.torch_threads(cfg.num_threads):
        x_mean, x_std = feature_scaling(W)
        y_scale = np.sqrt(np.mean(Y**2, axis=0))
        torch.manual_seed(cfg.seed)
        net = SequenceNet(cfg, W.shape[2], Y.shape[1])
        net.set_scaling(*(torch.tensor(a, dtype=torch.float32) for a in (x_mean, x_std, y_scale)))
        loss_fn = make_loss(cfg)
        train_dl = base._loader(W, Y / y_scale, cfg.batch_size, shuffle=True, seed=cfg.seed)
        val_dl = base._loader(Wv, Yv / y_scale, max(cfg.batch_size, 1024), shuffle=False, seed=cfg.seed)
        total = cfg.max_epochs * len(train_dl)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        warmup = int(cfg.warmup_frac * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total, warmup, cfg.min_lr_frac)
        )
        autocast = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
            if base.amp_precision("cpu", True, getattr(cfg, "cpu_bf16", False)) == "bf16-mixed"
            else contextlib.nullcontext
        )
        best, best_state = float("inf"), None
        for _ in range(cfg.max_epochs):
            net.train()
            for x, y in train_dl:
                opt.zero_grad(set_to_none=True)
                with autocast():
                    loss = loss_fn(net(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
            net.eval()
            with torch.no_grad(), autocast():
                parts = [(float(loss_fn(net(x), y)), len(x)) for x, y in val_dl]
            val = sum(v * n for v, n in parts) / sum(n for _, n in parts)
            if val < best:
                best, best_state = val, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)


# -- the changes, one at a time (context managers that patch the Lightning path) --------------------
@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)


class _PerWindow(torch.utils.data.Dataset):
    """The textbook Dataset: one window per item, batched by the default collate function."""

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        self.X, self.Y = X, Y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.asarray(self.X[i], dtype=np.float32)), torch.from_numpy(
            np.asarray(self.Y[i], dtype=np.float32)
        )


def _per_window_loader(X, Y, batch_size, shuffle, seed, pin_memory=False):  # noqa: ANN001, ANN202
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        _PerWindow(X, Y), batch_size=batch_size, shuffle=shuffle, generator=gen, pin_memory=pin_memory
    )


def _pinned_loader(X, Y, batch_size, shuffle, seed, pin_memory=False):  # noqa: ANN001, ANN202
    return _ORIGINAL_LOADER(X, Y, batch_size, shuffle, seed, pin_memory=True)


_ORIGINAL_LOADER = base._loader


class _NoStepLog(base.SequenceLightningModule):
    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return self.loss_fn(self.net(x), y)


class _Compiled(base.SequenceLightningModule):
    """The network behind `torch.compile` (inductor) for training; compile time is part of the fit."""

    def __init__(self, net, cfg, total_steps, loss_fn=None):  # noqa: ANN001
        super().__init__(net, cfg, total_steps, loss_fn)
        self._fwd = torch.compile(net)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        loss = self.loss_fn(self._fwd(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss


# name: what it is, "before"|"after" settings, extra config overrides, code patch, OpenMP environment.
# On a busy machine libgomp's default spin alone is the gap (a spinning thread waits for a descheduled
# peer), so every other change is measured ALONE on top of `lightning (spin)`. The OpenMP environment is
# read when torch loads, hence one fresh worker process per measurement (the parent sets it).
_SPIN = {"omp": {"GOMP_SPINCOUNT": "1000"}}
_PASSIVE = {"omp": {"OMP_WAIT_POLICY": "PASSIVE"}}
MODES: dict[str, dict[str, Any]] = {
    "plain (before)": {"what": "the floor, before's settings", "plain": True},
    "lightning (before)": {"what": "train_network, before's settings (libgomp's default spin)"},
    "lightning (passive)": {
        "what": "before + OMP_WAIT_POLICY=PASSIVE (idle threads sleep at once)",
        **_PASSIVE,
    },
    "plain (spin)": {"what": "the floor, before + GOMP_SPINCOUNT=1000", "plain": True, **_SPIN},
    "lightning (spin)": {"what": "before + GOMP_SPINCOUNT=1000 (idle threads spin briefly)", **_SPIN},
    "spin + windows copied": {"what": "windows as a contiguous copy, not the strided view", "copy": True},
    "spin + per-window loader": {
        "what": "DataLoader over single windows + default collate (before index-list batches)",
        "patch": "per_window",
    },
    "spin + pin_memory": {"what": "pinned host memory on the CPU", "patch": "pin"},
    "spin + 1 thread": {"what": "torch intra-op threads 1 instead of 2", "over": {"num_threads": 1}},
    "spin + bf16": {"what": "bf16 autocast on the CPU (native AVX512-BF16)", "over": {"cpu_bf16": True}},
    "spin + compile": {"what": "torch.compile(net) for training, compile time included", "patch": "compile"},
    "spin + no step logging": {"what": "no self.log of the training loss", "patch": "nolog"},
    "spin + 1-batch validation": {
        "what": "validation cut to one batch (= what validating costs)",
        "val1": True,
    },
    "plain (after)": {"what": "the floor, the presets now", "cfg": "after", "plain": True, **_SPIN},
    "lightning (after)": {"what": "train_network, the presets now", "cfg": "after", **_SPIN},
}
for _name, _spec in MODES.items():
    if _name.startswith("spin + "):
        _spec.update(_SPIN)
PATCHES: dict[str, Callable[[], Any]] = {
    "per_window": lambda: _patched(base, "_loader", _per_window_loader),
    "pin": lambda: _patched(base, "_loader", _pinned_loader),
    "compile": lambda: _patched(base, "SequenceLightningModule", _Compiled),
    "nolog": lambda: _patched(base, "SequenceLightningModule", _NoStepLog),
}


def _cfg(family: str, preset: str | None, overrides: dict[str, Any], epochs: int) -> Any:
    over = {**overrides, "max_epochs": epochs}
    cfg = load_model_preset(get_settings().configs_dir, family, preset, over)
    return cfg.model_copy(update={"patience": max(cfg.patience, epochs + 1)})


def _before_preset(family: str, preset: str | None) -> str | None:
    """The default preset as it was before issue 17's sizing, kept as `<default>_prev` where it changed."""
    from pipelines.contracts.yamlio import read_yaml

    doc = read_yaml(get_settings().configs_dir / "models" / f"{family}.yaml")
    name = preset or doc.get("default")
    return f"{name}_prev" if f"{name}_prev" in doc.get("presets", {}) else name


def worker(family: str, preset: str | None, mode: str, data: Path, n: int, epochs: int) -> dict[str, Any]:
    """One measured fit in this (fresh) process: the parent set its OpenMP environment."""
    spec = MODES[mode]
    z = np.load(data)
    W = np.lib.stride_tricks.sliding_window_view(z["rows"], 60, axis=0).transpose(0, 2, 1)  # a view
    Y = z["labels"]
    n_val = max(64, n // 10)
    Wt, Yt = W[:n], Y[:n]
    Wv, Yv = W[n + 5 : n + 5 + n_val], Y[n + 5 : n + 5 + n_val]
    if spec.get("cfg", "before") == "before":
        cfg = _cfg(family, _before_preset(family, preset), {**BEFORE, **spec.get("over", {})}, epochs)
    else:
        cfg = _cfg(family, preset, {}, epochs)
    if spec.get("copy"):
        Wt = np.ascontiguousarray(Wt)
    if spec.get("val1"):
        Wv, Yv = Wv[: cfg.batch_size], Yv[: cfg.batch_size]
    ctx = PATCHES[spec["patch"]] if "patch" in spec else contextlib.nullcontext

    def run() -> None:
        if spec.get("plain"):
            plain_fit(cfg, Wt, Yt, Wv, Yv)
            return
        with ctx():
            SequenceRegressor(cfg, W.shape[2], HORIZONS).fit(Wt, Yt, X_val=Wv, Y_val=Yv)

    load = os.getloadavg()[0]
    c0, t0 = _cpu_seconds(), time.perf_counter()
    run()
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    settings = {k: getattr(cfg, k) for k in ("batch_size", "d_model", "n_layers", "num_threads", "cpu_bf16")}
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "load1": load,
        "openmp_env": {k: os.environ[k] for k in OMP_VARS if k in os.environ},
        "settings": settings,
        "n_val": len(Wv),
    }


def _spawn(family: str, preset: str | None, mode: str, data: Path, n: int, epochs: int) -> dict[str, Any]:
    env = dict(os.environ)
    # before: libgomp's default; spin/after: what importing pipelines.models.sequence sets. Set here
    # because this script imports torch before the package.
    for k in OMP_VARS:
        env.pop(k, None)
    env.update(MODES[mode].get("omp", {}))
    cmd = [sys.executable, __file__, "--worker", f"{family}:{preset or ''}:{mode}", "--data", str(data)]
    cmd += ["--windows", str(n), "--epochs", str(epochs)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{family} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_family(
    family: str,
    preset: str | None,
    data: Path,
    n: int,
    epochs: int,
    repeats: int,
    modes: list[str],
    busy: int = 0,
) -> list[dict[str, Any]]:
    """Interleaved rounds of every mode for one family; one summary row per mode."""
    trained = epochs * n
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(repeats):
        for m in modes:
            r = _spawn(family, preset, m, data, n, epochs)
            runs[m].append(r)
            print(
                f"  {family}:{preset or ''} {m}: {trained / r['wall_s']:.0f} w/s, load {r['load1']:.1f}",
                flush=True,
            )
    rows = []
    for m in modes:
        rs = runs[m]
        best = min(rs, key=lambda r: r["wall_s"])
        rows.append(
            {
                "family": family,
                "preset": preset or "default",
                "mode": m,
                "what": MODES[m]["what"],
                "windows_per_s": trained / best["wall_s"],
                "windows_per_cpu_s": trained / statistics.median(r["cpu_s"] for r in rs),
                "load1_at_best": best["load1"],
                "load1_max": max(r["load1"] for r in rs),
                "wall_s": [round(r["wall_s"], 3) for r in rs],
                "cpu_s": [round(r["cpu_s"], 3) for r in rs],
                "train_windows": n,
                "val_windows": best["n_val"],
                "epochs": epochs,
                "openmp_env": best["openmp_env"],
                "busy_processes": busy,
                "settings": best["settings"],
            }
        )
    by = {r["mode"]: r for r in rows}
    for key in ("before", "spin", "after"):  # Lightning relative to its floor, same settings
        p, lt = by.get(f"plain ({key})"), by.get(f"lightning ({key})")
        if p and lt:
            lt["vs_plain_wall"] = lt["windows_per_s"] / p["windows_per_s"]
            lt["vs_plain_cpu"] = lt["windows_per_cpu_s"] / p["windows_per_cpu_s"]
    for ref_mode, key in (("lightning (before)", "vs_before"), ("lightning (spin)", "vs_spin")):
        ref = by.get(ref_mode)
        for r in rows if ref else []:
            r[f"{key}_wall"] = r["windows_per_s"] / ref["windows_per_s"]
            r[f"{key}_cpu"] = r["windows_per_cpu_s"] / ref["windows_per_cpu_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--windows", type=int, default=2048, help="training windows per fit")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed000-windows", type=int, default=256, help="0 = skip transformer seed000")
    ap.add_argument("--modes", default="", help="comma-separated subset of the modes (default: all)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs (slow to compile)")
    ap.add_argument(
        "--busy", type=int, default=0, help="busy-loop processes beside the fits (a shared machine)"
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_throughput.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        family, preset, mode = args.worker.split(":", 2)
        print(json.dumps(worker(family, preset or None, mode, Path(args.data), args.windows, args.epochs)))
        return
    modes = [m for m in (args.modes.split(",") if args.modes else MODES) if m]
    modes = [m for m in modes if not (args.no_compile and "compile" in m)]
    out = Path(args.out)
    kept = json.loads(out.read_text())["rows"] if out.exists() else []
    rows: list[dict[str, Any]] = []

    def key(r: dict[str, Any]) -> tuple:
        return (r["family"], r["preset"], r["mode"], r.get("busy_processes", 0))

    def save() -> None:  # after every family: a long run keeps what it measured
        new = {key(r) for r in rows}
        meta = {
            "command": "benchmarks/bench_train_throughput.py " + " ".join(sys.argv[1:]),
            "torch": torch.__version__,
            "cpu_bf16_native": base.cpu_bf16_supported(),
            "cpus": os.cpu_count(),
            "before": "the previous default preset (`<name>_prev` where it changed), 2 threads, float32, "
            "libgomp's default wait (spin 300,000 rounds)",
            "note": "windows/s: best round (wall); windows per CPU-second: median; load1 = 1-minute load "
            "average when the fit started; busy_processes: busy-loop processes running beside the fits",
        }
        merged = [r for r in kept if key(r) not in new] + rows
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "rows": merged}, indent=2))

    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)
    ]  # a shared machine, reproducibly: N processes that want a core each
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "windows.npz"
            rows_x, labels = real_rows(args.windows + args.windows // 10 + 1500)  # + warm-up and T - 1
            np.savez(data, rows=rows_x, labels=labels)
            for family in args.families.split(","):
                rows += bench_family(
                    family, None, data, args.windows, args.epochs, args.repeats, modes, args.busy
                )
                save()
            if args.seed000_windows:
                seed_modes = ["plain (before)", "lightning (before)", "lightning (spin)", "spin + bf16"]
                rows += bench_family(
                    "transformer",
                    "seed000",
                    data,
                    args.seed000_windows,
                    1,
                    args.repeats,
                    seed_modes,
                    args.busy,
                )
                save()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(table(rows))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: windows/s (wall, best round), per CPU-second, and the ratios (wall)."""
    out = [
        "| family:preset | busy | mode | windows/s | windows/CPU-s | vs before | vs spin | Lightning/plain | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict[str, Any], k: str) -> str:
        return f"{r[k]:.2f}" if k in r else ""

    for r in rows:
        out.append(
            f"| {r['family']}:{r['preset']} | {r.get('busy_processes', 0)} | {r['mode']} | {r['windows_per_s']:.0f} | "
            f"{r['windows_per_cpu_s']:.0f} | {cell(r, 'vs_before_wall')} | {cell(r, 'vs_spin_wall')} | "
            f"{cell(r, 'vs_plain_wall')} | {r['load1_at_best']:.1f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
