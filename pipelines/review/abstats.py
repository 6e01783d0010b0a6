"""A/B experiment statistics: the public names, re-exported from `pipelines.ab.*`.

Per arm and horizon: direction accuracy with CI, IC, MSE, fee-aware P&L. Split traffic: Welch's
t-test + Cohen's d and a block-bootstrap CI. Shadow traffic: Diebold-Mariano with Newey-West HAC
and the HLN correction. Repeated reviews: an always-valid normal-mixture SPRT on the mean loss
difference with HAC variance (see `pipelines.review.sequential` for why this and not alpha spending).
Entry point: `compare_arms(champion, challenger, paired=..., fee_bps=..., alpha=..., looks=...)`.
"""

from pipelines.review.arms import (
    ABDataError,
    ArmData,
    ArmMetrics,
    arm_metrics,
    direction_hits,
    fee_aware_pnl,
    per_request_loss,
    trade_rows,
    wilson_interval,
)
from pipelines.review.compare import ABResult, compare_arms, look_times
from pipelines.review.fixed import (
    BootstrapCI,
    DMResult,
    WelchResult,
    block_bootstrap_diff_ci,
    diebold_mariano,
    hln_factor,
    welch_stats,
    welch_test,
)
from pipelines.review.hac import (
    effective_sample_size,
    newey_west_lag,
    newey_west_lrv,
    politis_white_block_length,
    prefix_mean_lrv,
)
from pipelines.review.sequential import (
    SequentialResult,
    log_mixture_lr,
    mixture_tau2,
    optimal_r,
    sequential_paired,
    sequential_split,
)

__all__ = [
    "ABDataError",
    "ABResult",
    "ArmData",
    "ArmMetrics",
    "BootstrapCI",
    "DMResult",
    "SequentialResult",
    "WelchResult",
    "arm_metrics",
    "block_bootstrap_diff_ci",
    "compare_arms",
    "diebold_mariano",
    "direction_hits",
    "effective_sample_size",
    "fee_aware_pnl",
    "hln_factor",
    "log_mixture_lr",
    "look_times",
    "mixture_tau2",
    "newey_west_lag",
    "newey_west_lrv",
    "optimal_r",
    "per_request_loss",
    "politis_white_block_length",
    "prefix_mean_lrv",
    "sequential_paired",
    "sequential_split",
    "trade_rows",
    "welch_stats",
    "welch_test",
    "wilson_interval",
]
