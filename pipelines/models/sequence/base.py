"""The shared training loop (one LightningModule) and the estimator every sequence model is.

`SequenceRegressor(cfg, n_features, horizons)` follows the `ReturnsModel` protocol
(pipelines/models/base.py): `fit(X [N, T, F], Y [N, H], X_val=, Y_val=)`, `predict`, `to_onnx`,
`get_params`. The architecture is only the encoder (one small file per model); this module owns
(in `train_network`, shared with `classifier.SequenceClassifier`):
- normalisation fitted on the training fold only (installed inside the graph, see net.py);
- AdamW with linear warm-up then cosine decay per step; global-norm gradient clipping;
- early stopping on the purged validation slice (an epoch counts as better only by more than
  `min_delta`, where the preset sets one), best weights restored (kept in memory, no files);
- optional SWA over the later epochs, kept only if it beats the best checkpoint on validation;
- the device from the preset's `device` (auto | cpu | cuda; `resolve_device`): on CUDA, automatic
  mixed precision (bf16 autocast where the GPU has it, else fp16 with loss scaling) when
  `mixed_precision`, and pinned host memory for the batches; asking for cuda without CUDA trains on
  the CPU after one log line. CPU training is float32 (bf16 autocast with `cpu_bf16` on CPUs that
  have native bf16), seeded and deterministic;
- known third-party deprecation warnings silenced around the fit only (`quiet_third_party_warnings`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from pipelines.config import SequenceModelConfig
from pipelines.contracts.errors import KairosError
from pipelines.models.sequence.losses import LossFn, make_loss
from pipelines.models.sequence.net import SequenceNet

PREDICT_BATCH = 2048  # windows per inference chunk (memory bound: 2048 x 60 x F floats)
DEVICES = ("auto", "cpu", "cuda")
log = logging.getLogger("kairos.models.sequence")

# Deprecation warnings raised inside third-party code on every fit, that no caller can act on:
# (category, message regex, module regex of the code that warns). Filtered around the zoo's fit only,
# so the same warnings elsewhere (and any new one) still show. Remove an entry once the upstream fix
# is installed (`tests/unit/test_sequence_device.py` fails if a fit warns again).
KNOWN_THIRD_PARTY_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # lightning 2.6 with torch 2.13: lightning.pytorch.utilities._pytree builds LeafSpec() per batch
    (
        FutureWarning,
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"lightning\.pytorch\.utilities\._pytree",
    ),
)


class SequenceModelError(KairosError):
    """Bad input to a sequence model (shape, non-finite values) or use before fit."""


class _Windows(Dataset):
    """Batches by index list: one fancy-index copy per batch instead of B single-item copies."""

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        self.X, self.Y = X, Y  # X may be a read-only strided view of sliding windows

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(
            np.asarray(idx)
        )  # sorted gather is cache-friendlier; order within a batch is irrelevant
        return torch.from_numpy(np.ascontiguousarray(self.X[idx], dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(self.Y[idx], dtype=np.float32)
        )


def _loader(
    X: np.ndarray, Y: np.ndarray, batch_size: int, shuffle: bool, seed: int, pin_memory: bool = False
) -> DataLoader:
    ds = _Windows(X, Y)
    base = (
        RandomSampler(ds, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(ds)
    )
    return DataLoader(
        ds, sampler=BatchSampler(base, batch_size, drop_last=False), batch_size=None, pin_memory=pin_memory
    )


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear 0→1 over `warmup` steps, then cosine 1→`floor` until `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SequenceLightningModule(L.LightningModule):
    """Owns the optimisation of any network of the zoo: loss (from config or given), warm-up + cosine."""

    def __init__(
        self, net: nn.Module, cfg: SequenceModelConfig, total_steps: int, loss_fn: LossFn | None = None
    ) -> None:
        super().__init__()
        self.net, self.cfg, self.total_steps = net, cfg, total_steps
        self.loss_fn = loss_fn or make_loss(cfg)  # the regressors' loss from the config unless given

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.loss_fn(self.net(x), y), on_epoch=True, batch_size=len(x))

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.cfg
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        warmup = int(cfg.warmup_frac * self.total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, self.total_steps, warmup, cfg.min_lr_frac)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class BestAndSWA(Callback):
    """Keeps (in memory) the best-validation weights and, optionally, a running SWA average."""

    def __init__(self, swa_start_epoch: int | None) -> None:
        self.swa_start_epoch = swa_start_epoch
        self.best_loss, self.best_epoch, self.best_state = math.inf, -1, None
        self.swa_state: dict[str, torch.Tensor] | None = None
        self.swa_n = 0
        self.val_history: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = float(trainer.callback_metrics["val_loss"])
        epoch = trainer.current_epoch
        self.val_history.append(loss)
        state = pl_module.net.state_dict()
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
            self.best_state = copy.deepcopy(state)
        if self.swa_start_epoch is not None and epoch >= self.swa_start_epoch:
            if self.swa_state is None:
                self.swa_state = copy.deepcopy(state)
            else:  # running mean of float weights; buffers (scaling, masks) are constant anyway
                for k, v in state.items():
                    if v.is_floating_point():
                        self.swa_state[k] += (v - self.swa_state[k]) / (self.swa_n + 1)
            self.swa_n += 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads, restoring the previous count (the setting is process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-fit banner ("GPU available: ..."), restoring the level afterwards."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


@contextlib.contextmanager
def quiet_third_party_warnings() -> Iterator[None]:
    """Ignore exactly the `KNOWN_THIRD_PARTY_WARNINGS` inside the block (nothing else, nowhere else)."""
    with warnings.catch_warnings():
        for category, message, module in KNOWN_THIRD_PARTY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


def resolve_device(requested: str = "auto") -> str:
    """The device a fit runs on: "cuda" or "cpu".

    "auto" takes CUDA when torch sees a GPU, else the CPU. "cuda" without CUDA falls back to the CPU
    with one warning line (a preset written for a GPU host still trains on a laptop or in CI).
    """
    if requested not in DEVICES:
        raise SequenceModelError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    available = torch.cuda.is_available()
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" and not available:
        log.warning(
            "device=cuda requested but CUDA is not available (torch %s); training on cpu", torch.__version__
        )
        return "cpu"
    return "cuda" if available else "cpu"


def cpu_bf16_supported() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 / AMX); elsewhere it is emulated
    and slower than float32."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_precision(device: str, mixed_precision: bool, cpu_bf16: bool = False) -> str:
    """Lightning's `precision` for a device: AMP on CUDA (bf16 where supported, else fp16); on the CPU
    bf16 autocast when `cpu_bf16` and the CPU has native bf16 (one log line when it has not), else fp32."""
    if device == "cuda":
        if not mixed_precision:
            return "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if cpu_bf16:
        if cpu_bf16_supported():
            return "bf16-mixed"
        log.warning("cpu_bf16 requested but this CPU has no native bfloat16; training in float32")
    return "32-true"


def _check_xy(X: np.ndarray, Y: np.ndarray | None, T: int, F: int, H: int, what: str) -> None:
    if X.ndim != 3 or X.shape[1:] != (T, F):
        raise SequenceModelError(
            f"{what}: expected windows of shape (N, {T}, {F}), got {X.shape}; build them with "
            "pipelines.training.windows.sliding_windows(rows, length)"
        )
    if Y is not None and (Y.ndim != 2 or Y.shape != (len(X), H)):
        raise SequenceModelError(f"{what}: expected labels of shape ({len(X)}, {H}), got {Y.shape}")
    # A sample of windows is enough to catch un-dropped warm-up NaNs without scanning ~GBs of views.
    sample = X[:: max(1, len(X) // 512)]
    if not np.isfinite(sample).all() or (Y is not None and not np.isfinite(Y).all()):
        raise SequenceModelError(
            f"{what}: non-finite values in windows or labels; drop them first (pipelines.training.windows.window_dataset)"
        )


def feature_scaling(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, std) float64 (F,) of training windows X (N, T, F), installed inside the graph.

    Each window's last row covers every row except the first T-1 (overlapping windows), without
    materialising N*T*F values. Constant features get std 1.
    """
    last = np.asarray(X[:, -1, :], dtype=np.float64)
    x_mean, x_std = last.mean(0), last.std(0)
    return x_mean, np.where(x_std > 1e-12, x_std, 1.0)


@dataclass
class TrainResult:
    """What `train_network` hands back: the network in eval mode (best or SWA weights) and its history."""

    net: nn.Module
    best_epoch: int
    epochs_run: int
    val_history: list[float]
    used_swa: bool


def _eval_loss(module: SequenceLightningModule, dl: DataLoader) -> float:
    module.net.eval()
    with torch.no_grad():
        losses = [(float(module.loss_fn(module.net(x), y)), len(x)) for x, y in dl]
    return sum(v * n for v, n in losses) / sum(n for _, n in losses)


def train_network(
    build: Callable[[], nn.Module],
    cfg: SequenceModelConfig,
    X: np.ndarray,
    Y: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    *,
    loss_fn: LossFn | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """The zoo's one training loop, for any network whose `forward(x)` is what `loss_fn(out, y)` takes.

    Seeds torch with `cfg.seed` and then calls `build()` (so weight init is seeded), trains with AdamW,
    warm-up + cosine per step and gradient clipping for at most `cfg.max_epochs`, stops early on the
    validation loss (`cfg.patience`), restores the best-validation weights, and keeps the SWA average
    instead when `cfg.swa` and it beats them on validation. Runs with `cfg.num_threads` torch threads,
    on `cfg.device` (see `resolve_device`; configs without the field train as "auto"); the returned
    network is on the CPU either way.

    Args:
        build: makes the network (with its fitted normalisation already installed).
        cfg: the preset (epochs, batch size, lr, schedule, patience, SWA, seed, threads, precision).
        X, Y: training windows (N, T, F) and targets (N, K) as the loss sees them.
        X_val, Y_val: the validation windows and targets for early stopping.
        loss_fn: the training loss; None = the regressors' loss named by `cfg.loss`.
        callbacks: extra Lightning callbacks (e.g. Optuna pruning on "val_loss").
    """
    device = resolve_device(getattr(cfg, "device", "auto"))
    cuda = device == "cuda"
    with torch_threads(cfg.num_threads), _quiet_lightning(), quiet_third_party_warnings():
        torch.manual_seed(cfg.seed)  # weights init and dropout masks during training
        net = build()
        train_dl = _loader(X, Y, cfg.batch_size, shuffle=True, seed=cfg.seed, pin_memory=cuda)
        val_dl = _loader(
            X_val, Y_val, max(cfg.batch_size, 1024), shuffle=False, seed=cfg.seed, pin_memory=cuda
        )
        total_steps = cfg.max_epochs * len(train_dl)
        module = SequenceLightningModule(net, cfg, total_steps, loss_fn)
        keeper = BestAndSWA(int(cfg.swa_start_frac * cfg.max_epochs) if cfg.swa else None)
        trainer = L.Trainer(
            max_epochs=cfg.max_epochs,
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            precision=amp_precision(device, cfg.mixed_precision, getattr(cfg, "cpu_bf16", False)),
            gradient_clip_val=cfg.grad_clip,
            gradient_clip_algorithm="norm",
            callbacks=[
                EarlyStopping(
                    "val_loss", patience=cfg.patience, mode="min", min_delta=getattr(cfg, "min_delta", 0.0)
                ),
                keeper,
                *callbacks,
            ],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, train_dl, val_dl)
        net = module.net.cpu()
        net.load_state_dict(keeper.best_state)
        used_swa = False
        if keeper.swa_state is not None and keeper.swa_n > 1:
            best_loss = _eval_loss(module, val_dl)
            best_state = keeper.best_state
            net.load_state_dict(keeper.swa_state)
            if _eval_loss(module, val_dl) < best_loss:
                used_swa = True
            else:
                net.load_state_dict(best_state)
    net.eval()
    return TrainResult(net, keeper.best_epoch, len(keeper.val_history), keeper.val_history, used_swa)


class SequenceRegressor:
    """Estimator wrapper (ReturnsModel protocol) around one `SequenceNet` architecture.

    Learned attributes (after `fit`): `net_`, `best_epoch_`, `epochs_run_`, `val_history_`,
    `used_swa_`, `n_train_`.
    """

    input_kind = "sequence"

    def __init__(self, config: SequenceModelConfig, n_features: int, horizons: Sequence[int]) -> None:
        self.config = config
        self.n_features = n_features
        self.horizons = tuple(horizons)

    @property
    def model_type(self) -> str:
        return self.config.architecture

    @property
    def sequence_length(self) -> int:
        return self.config.sequence_length

    @property
    def parity_tolerance(self) -> float:
        return self.config.parity_tolerance

    def get_params(self) -> dict[str, Any]:
        """Flat hyperparameters for MLflow (quantiles joined as text)."""
        p = {
            k: (",".join(map(str, v)) if isinstance(v, tuple) else v)
            for k, v in self.config.model_dump().items()
        }
        return {
            "model_type": self.model_type,
            "n_features": self.n_features,
            **p,
            "horizons": ",".join(map(str, self.horizons)),
        }

    # -- training ---------------------------------------------------------------------------------
    def _holdout(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, ...]:
        """No validation slice given: hold out the newest 10 %, purged by max(horizon) windows."""
        n_val = max(1, len(X) // 10)
        gap = max(self.horizons)
        cut = len(X) - n_val
        return X[: cut - gap], Y[: cut - gap], X[cut:], Y[cut:]

    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        Y_val: np.ndarray | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> Self:
        """Train on windows X (N, T, F) float32 and labels Y (N, H) float64 (log returns).

        Early stopping watches (X_val, Y_val), the purged validation slice; without one the newest
        10 % of X is held out (purged). The best-validation weights are restored at the end.
        `callbacks`: extra Lightning callbacks, e.g. Optuna's pruning callback on "val_loss".
        """
        cfg, T, F, H = self.config, self.config.sequence_length, self.n_features, len(self.horizons)
        Y = np.asarray(Y, dtype=np.float64)
        _check_xy(X, Y, T, F, H, "fit")
        if X_val is None or Y_val is None:
            X, Y, X_val, Y_val = self._holdout(X, Y)
        Y_val = np.asarray(Y_val, dtype=np.float64)
        _check_xy(X_val, Y_val, T, F, H, "fit(validation)")
        if len(X) < cfg.batch_size // 4 or len(X_val) < 1:
            raise SequenceModelError(
                f"fit: {len(X)} training windows are too few for batch_size={cfg.batch_size}"
            )

        x_mean, x_std = feature_scaling(X)
        # Labels: divide by RMS (no centring) so that the sign of every label is preserved.
        y_scale = np.sqrt(np.mean(Y**2, axis=0))
        y_scale = np.where(y_scale > 0, y_scale, 1.0)

        def build() -> SequenceNet:
            net = SequenceNet(cfg, F, H)
            net.set_scaling(*(torch.tensor(a, dtype=torch.float32) for a in (x_mean, x_std, y_scale)))
            return net

        result = train_network(build, cfg, X, Y / y_scale, X_val, Y_val / y_scale, callbacks=callbacks)
        self.net_ = result.net
        self.best_epoch_ = result.best_epoch
        self.epochs_run_ = result.epochs_run
        self.val_history_ = result.val_history
        self.used_swa_ = result.used_swa
        self.n_train_ = len(X)
        return self

    # -- inference --------------------------------------------------------------------------------
    def _require_fitted(self) -> SequenceNet:
        if not hasattr(self, "net_"):
            raise SequenceModelError(f"{self.model_type} model is not fitted; call fit(X, Y) first")
        return self.net_

    def predict_with_confidence(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode (returns, confidence), both float64 (N, H): exactly what the ONNX graph computes."""
        net = self._require_fitted()
        _check_xy(X, None, self.sequence_length, self.n_features, len(self.horizons), "predict")
        outs: list[tuple[np.ndarray, np.ndarray]] = []
        with torch_threads(self.config.num_threads), torch.inference_mode():
            for i in range(0, len(X), PREDICT_BATCH):
                xb = torch.from_numpy(np.ascontiguousarray(X[i : i + PREDICT_BATCH], dtype=np.float32))
                r, c = net.returns_and_confidence(xb)
                outs.append((r.numpy(), c.numpy()))
        H = len(self.horizons)
        if not outs:
            return np.empty((0, H)), np.empty((0, H))
        return (
            np.concatenate([o[0] for o in outs]).astype(np.float64),
            np.concatenate([o[1] for o in outs]).astype(np.float64),
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted log returns, float64 (N, H)."""
        return self.predict_with_confidence(X)[0]

    def to_onnx(self, opset: int | None = None) -> bytes:
        """Self-contained ONNX: "features" float32 [N, T, F] → "returns", "confidence" float32 [N, H]."""
        from pipelines.models.sequence.onnx_io import export_onnx

        return export_onnx(
            self._require_fitted(),
            self.sequence_length,
            self.n_features,
            opset or self.config.opset,
            self.config.num_threads,
        )
