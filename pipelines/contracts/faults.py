"""Fault points for crash tests: `checkpoint(name)` SIGKILLs this process when `KAIROS_KILL_AT` names it.

The daily retrain passes five points (`POINTS`, in loop order); tests/flows/test_crash_safety.py kills a
real retrain at each and checks that the store and the registry stay consistent and that a rerun
completes. In a normal run the variable is unset and a checkpoint costs one environment look-up (~0.1 µs).
SIGKILL, not an exception: nothing (no `finally`, no `atexit`, no Prefect state hook) runs after it, as
when the machine dies or the OOM killer strikes.
"""

from __future__ import annotations

import os
import signal

ENV = "KAIROS_KILL_AT"
POINTS = (
    "after-ingest",  # candles committed to the store, nothing trained
    "after-training",  # model fitted and exported in memory, nothing logged
    "during-export",  # the serving bundle half written to the run's artifacts (model.onnx, no manifest)
    "after-register",  # model version created, no alias on it yet
    "during-promote",  # champion alias moved, its history record not yet written
)


def checkpoint(name: str) -> None:
    """Kill this process with SIGKILL if `KAIROS_KILL_AT` is `name`; else return at once."""
    target = os.environ.get(ENV)
    if target is None:
        return
    if target not in POINTS:
        raise ValueError(f"{ENV}={target!r} is not a fault point; use one of {', '.join(POINTS)}")
    if target == name:
        os.kill(os.getpid(), signal.SIGKILL)
