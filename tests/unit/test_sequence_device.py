"""Where the zoo trains (device auto | cpu | cuda, AMP, CPU fallback) and a quiet training run (issue 17).

CUDA is never needed: torch.cuda.is_available is patched to False where the fallback is tested, so
these tests mean the same on a GPU host.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from pipelines.contracts.errors import ConfigError, KairosError
from pipelines.models.sequence import SequenceModelError, make_sequence_model
from pipelines.models.sequence.base import amp_precision, quiet_third_party_warnings, resolve_device

LOGGER = "kairos.models.sequence"


@pytest.fixture()
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _windows(n: int = 700, T: int = 16, F: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, T, F)).astype(np.float32)
    Y = rng.standard_normal((n, 2)) * 1e-3
    return W, Y


def test_resolve_device_falls_back_to_cpu_with_one_log_line(no_cuda, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert resolve_device("cuda") == "cpu"
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "device=cuda requested but CUDA is not available" in records[0].getMessage()
    assert "training on cpu" in records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert resolve_device("auto") == "cpu"
        assert resolve_device("cpu") == "cpu"
    assert not [r for r in caplog.records if r.name == LOGGER]  # auto / cpu: nothing to report


def test_resolve_device_takes_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(SequenceModelError, match="device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_device("tpu")


def test_amp_precision(monkeypatch):
    assert amp_precision("cpu", True) == "32-true"
    assert amp_precision("cuda", False) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_precision("cuda", True) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_precision("cuda", True) == "16-mixed"


def test_presets_take_a_device_and_refuse_unknown_ones():
    model = make_sequence_model("transformer", 3, (1, 2), preset="tiny", overrides={"device": "cuda"})
    assert model.config.device == "cuda"
    assert make_sequence_model("mamba", 3, (1, 2), preset="tiny").config.device == "auto"
    with pytest.raises((ConfigError, KairosError, ValueError), match="device"):
        make_sequence_model("transformer", 3, (1, 2), preset="tiny", overrides={"device": "tpu"})


def test_a_cuda_preset_trains_on_the_cpu_without_cuda(no_cuda, caplog):
    W, Y = _windows()
    model = make_sequence_model(
        "transformer",
        3,
        (1, 2),
        preset="tiny",
        overrides={"device": "cuda", "sequence_length": 16, "max_epochs": 1, "num_threads": 1},
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        model.fit(W[:600], Y[:600], X_val=W[605:], Y_val=Y[605:])
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    assert next(model.net_.parameters()).device.type == "cpu"
    assert np.isfinite(model.predict(W[605:])).all()


# -- quiet CLI ------------------------------------------------------------------------------------
def _is_library_deprecation(w: warnings.WarningMessage) -> bool:
    path = str(w.filename).replace("\\", "/")
    from_library = any(
        f"/{lib}/" in path for lib in ("lightning", "torch", "lightning_fabric", "pytorch_lightning")
    )
    return issubclass(w.category, (DeprecationWarning, FutureWarning)) and from_library


def test_a_tiny_training_run_emits_no_library_deprecation_warnings(capfd):
    """preset tiny, 1 epoch, every architecture: no DeprecationWarning/FutureWarning from lightning/torch."""
    W, Y = _windows()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for arch in ("transformer", "lstm_attention", "tft", "mamba"):
            model = make_sequence_model(
                arch,
                3,
                (1, 2),
                preset="tiny",
                overrides={"sequence_length": 16, "max_epochs": 1, "num_threads": 1},
            )
            model.fit(W[:600], Y[:600], X_val=W[605:], Y_val=Y[605:])
            model.to_onnx()
    noisy = [
        f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if _is_library_deprecation(w)
    ]
    assert not noisy, noisy
    err = capfd.readouterr().err
    assert "deprecated" not in err.lower(), err


def test_only_the_known_warnings_are_filtered():
    """The filter is exact: the same message from elsewhere, or another FutureWarning, still shows."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_third_party_warnings():
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "something else is deprecated",
        "`isinstance(treespec, LeafSpec)` is deprecated",  # raised here, not in lightning's _pytree
    ]
