"""The newest test window of a training run: what the promotion policy compares champion and challenger on.

Training builds it (`pipelines.training.walk_forward`), the registry logs it with the run as
`newest_window.npz` (arrays `open_times`, `predictions`, `actuals`, `baseline_<who>`) and reads it back for
`kairos promote` (`registry.runs.load_newest_window`), the promotion compares on it
(`pipelines.review.newest_window`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class NewestWindow:
    """The newest test window: what the promotion policy compares champion and challenger on."""

    open_times: np.ndarray  # int64 epoch ms of the rows, shape (n,)
    predictions: np.ndarray  # float, (n, H): the model's out-of-sample predictions
    actuals: np.ndarray  # float, (n, H): realised labels (the task's)
    # the task's naive baselines on the same rows, `{who: forecast}` (first axis = row; layout per task),
    # so the promotion policy can require beating them; empty for runs logged before it was recorded
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
