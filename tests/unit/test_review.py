"""Review units: the policy decision, the HTML report and its figures, the MLflow review run."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import PromotionPolicy
from pipelines.review.abstats import compare_arms
from pipelines.review.arms import ArmData
from pipelines.review.decision import decide_review
from pipelines.review.report import FIGURES, cumulative_loss_difference, write_review_report

POLICY = PromotionPolicy(
    min_lift_pp=0.5, horizon=1, min_samples=500, alpha=0.05, require_beats_baselines=False
)


def arms(n: int, acc_a: float, acc_b: float, seed: int = 0, horizon: int = 1) -> tuple[ArmData, ArmData]:
    """Paired arms on the same n requests with the given direction accuracies (in expectation)."""
    rng = np.random.default_rng(seed)
    real = rng.normal(0, 1e-3, n)
    real[real == 0] = 1e-6
    t = 1_700_000_000_000 + 60_000 * np.arange(n)
    hit_a, hit_b = rng.random(n) < acc_a, rng.random(n) < acc_b
    pred_a = np.where(hit_a, 1, -1) * np.sign(real) * 1e-4
    pred_b = np.where(hit_b, 1, -1) * np.sign(real) * 1e-4
    return ArmData("champion v1", pred_a, real, t, horizon), ArmData(
        "challenger v2", pred_b, real, t, horizon
    )


def result(n: int, acc_a: float, acc_b: float, policy: PromotionPolicy = POLICY, seed: int = 0):
    a, b = arms(n, acc_a, acc_b, seed)
    return compare_arms(
        a, b, paired=True, fee_bps=1.0, alpha=policy.alpha, loss="direction", min_samples=policy.min_samples
    )


def test_clear_lift_promotes():
    d = decide_review(POLICY, result(4000, 0.50, 0.60))
    assert d.promote and d.verdict == "challenger better" and d.n == 4000
    assert 7 < d.lift_pp < 13 and d.p_value < 0.05
    assert "challenger better at h1" in d.reason and ">= min lift 0.50 pp" in d.reason


def test_significant_but_below_min_lift_keeps():
    policy = POLICY.model_copy(update={"min_lift_pp": 20.0})
    d = decide_review(policy, result(4000, 0.50, 0.60, policy))
    assert not d.promote and d.verdict == "challenger better" and "< min lift 20.00 pp" in d.reason


def test_no_difference_champion_better_and_too_few_rows_keep():
    same = decide_review(POLICY, result(3000, 0.52, 0.52, seed=3))
    assert (
        not same.promote
        and same.verdict == "no difference yet"
        and "no significant difference" in same.reason
    )
    worse = decide_review(POLICY, result(4000, 0.60, 0.50))
    assert not worse.promote and worse.verdict == "champion better" and "champion is better" in worse.reason
    few = decide_review(POLICY, result(400, 0.40, 0.70))  # a huge lift, but fewer rows than min_samples
    assert not few.promote and "min_samples 500" in few.reason
    nothing = decide_review(POLICY, None)
    assert not nothing.promote and nothing.verdict == "no experiment" and nothing.n == 0


def test_decision_refuses_the_wrong_horizon_or_loss():
    with pytest.raises(ValueError, match="horizon"):
        decide_review(POLICY.model_copy(update={"horizon": 2}), result(1000, 0.5, 0.6))
    a, b = arms(1000, 0.5, 0.6)
    sq = compare_arms(a, b, paired=True, fee_bps=1.0, loss="squared", min_samples=500)
    with pytest.raises(ValueError, match="'direction' loss"):
        decide_review(POLICY, sq)


def test_cumulative_loss_difference_is_the_paired_cumsum():
    a, b = arms(300, 0.5, 0.6, seed=1)
    t, d = cumulative_loss_difference(a, b)
    hits_a = np.sign(a.prediction) == np.sign(a.realised)
    hits_b = np.sign(b.prediction) == np.sign(b.realised)
    np.testing.assert_array_equal(t, a.time)
    np.testing.assert_allclose(d, np.cumsum(hits_b.astype(float) - hits_a.astype(float)))


def test_report_file_with_its_plots(tmp_path):
    by_h = {h: arms(800, 0.5, 0.58, seed=h, horizon=h) for h in (1, 2)}
    results = {h: compare_arms(a, b, paired=True, fee_bps=1.0, min_samples=100) for h, (a, b) in by_h.items()}
    rep = write_review_report(
        tmp_path / "r",
        model="returns-TEST-1m",
        champion_version="1",
        challenger_version="2",
        arms=by_h,
        results=results,
        decision="PROMOTE <because>",
        counts={"resolved": 3200, "pending": 10, "missing": 0},
        fee_bps=1.0,
    )
    assert rep.html == tmp_path / "r" / "report.html"
    assert [p.name for p in rep.figures] == list(FIGURES)
    for p in rep.figures:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a real plot, not an empty canvas
    text = rep.html.read_text()
    assert text.count("data:image/png;base64,") == 3
    assert "PROMOTE &lt;because&gt;" in text  # escaped
    assert results[1].summary().split(" (")[0] in text and "10 pending" in text
    assert "Diebold" in text and "naive Welch" in text


def test_review_run_in_mlflow_and_past_looks(tmp_path):
    from mlflow import MlflowClient

    from registry.client import make_client
    from registry.reviews import REVIEW_EXPERIMENT, log_review, past_review_times

    client = make_client(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts")
    by_h = {1: arms(600, 0.5, 0.6)}
    res = {1: compare_arms(*by_h[1], paired=True, fee_bps=1.0, min_samples=500)}
    rep = write_review_report(
        tmp_path / "r",
        model="m",
        champion_version="1",
        challenger_version="2",
        arms=by_h,
        results=res,
        decision="x",
        counts={"resolved": 600},
        fee_bps=1.0,
    )
    decision = decide_review(POLICY, res[1])
    assert past_review_times(client, "m", "1", "2") == []
    ids = [
        log_review(
            client,
            name="m",
            champion_version="1",
            challenger_version="2",
            review_time_ms=t,
            report_dir=rep.html.parent,
            results=res,
            decision=decision,
            policy=POLICY,
            counts={"resolved": 600, "pending": 0, "missing": 0},
        )
        for t in (2_000, 1_000)
    ]
    log_review(
        client,
        name="m",
        champion_version="1",
        challenger_version="3",
        review_time_ms=5_000,
        report_dir=rep.html.parent,
        results=res,
        decision=decision,
        policy=POLICY,
        counts={},
    )
    assert past_review_times(client, "m", "1", "2") == [1_000, 2_000]  # only this pair's looks
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(ids[0])
    assert run.info.experiment_id == client.get_experiment_by_name(REVIEW_EXPERIMENT).experiment_id
    assert run.data.metrics["h1.challenger.n"] == 600 and run.data.params["mode"] == "shadow"
    assert run.data.metrics["decision.promote"] == float(decision.promote)
    files = {f.path for f in client.list_artifacts(ids[0], "review")}
    assert files == {"review/report.html", *(f"review/{f}" for f in FIGURES)}
