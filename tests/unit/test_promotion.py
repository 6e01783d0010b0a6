"""Promotion policy (pure) and alias moves / history / rollback against a real MLflow (SQLite in tmp_path).

Versions are registered from hand-made linear ONNX graphs (no training needed to test aliases).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest

from pipelines.config import PromotionPolicy
from pipelines.contracts.bundle import FeatureSetSpec, Manifest, OutputSpec, TensorSpec
from pipelines.review.decision import decide
from pipelines.review.gates import PairedTest
from pipelines.training.metrics import direction_accuracy as _direction_accuracy
from pipelines.training.walk_forward import NewestWindow, TrainResult
from registry.client import CHALLENGER, CHAMPION, RegistryError
from registry.decisions import decisions
from registry.history import EXTERNAL_REASON, history, served_intervals, sync_external_moves
from registry.promotion import (
    apply_decision,
    assign_new_version,
    current_aliases,
    rollback,
    set_alias,
)
from registry.runs import log_training

POLICY = PromotionPolicy(min_lift_pp=0.5, min_samples=500, require_beats_baselines=False)


def paired(diff: float, p: float, n: int = 2880) -> PairedTest:
    """A gate (a) test result as `pipelines.review.gates.paired_test` returns it (direction loss)."""
    return PairedTest("direction", n, diff, diff - 0.01, diff + 0.01, 0.9, 2.0, p, 7, 300)


SIGNIFICANT, NOISE = paired(0.0061, 0.01), paired(0.0061, 0.21)


# ---------------------------------------------------------------- pure policy


def test_direction_accuracy_excludes_flat_and_unrealised_rows():
    pred = np.array([0.1, -0.2, 0.3, 0.4, -0.1, 0.0, 0.2])
    actual = np.array([0.5, -0.1, -0.2, 0.0, np.nan, 0.3, 0.1])
    # counted rows: 0 (hit), 1 (hit), 2 (miss), 5 (pred 0 = no call: miss), 6 (hit); rows 3, 4 excluded
    m = _direction_accuracy(pred, actual)
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(3 / 5)
    flat = _direction_accuracy(np.array([1.0]), np.array([0.0]))
    assert flat["n"] == 0 and np.isnan(flat["accuracy"])


def test_decide_promotes_on_a_significant_lift_and_says_the_numbers():
    args = dict(challenger_score=0.5231, champion_score=0.5170, n_rows=2880, gates={"parity": True})
    d = decide(POLICY, test=SIGNIFICANT, **args)
    assert d.promote and d.lift_pp == pytest.approx(0.61) and d.p_value == 0.01
    assert d.reason.startswith(
        "challenger 52.31% vs champion 51.70% on 2,880 rows of the newest window: +0.61 pp [90% CI -0.39, +1.61], "
        "one-sided DM p=0.01 (n=2,880, HAC lag 7), min lift 0.50 pp: significant at alpha 0.05"
    )
    # The example: +0.62 pp on 2,880 rows is noise (p=0.21): refused, with the p-value
    noise = decide(POLICY, test=NOISE, **args)
    assert not noise.promote and noise.failed_gates == ("significance",)
    assert "not significant at alpha 0.05 (p=0.21)" in noise.reason and "champion kept" in noise.reason
    exact = decide(
        POLICY,
        challenger_score=0.5150,
        champion_score=0.5100,
        n_rows=2880,
        gates={"parity": True},
        test=SIGNIFICANT,
    )
    assert exact.promote  # a lift equal to the threshold passes despite float rounding


@pytest.mark.parametrize(
    ("kwargs", "promote", "fragment"),
    [
        (dict(challenger_score=0.5190, champion_score=0.5170), False, "lift below the minimum 0.50 pp"),
        (
            dict(challenger_score=0.60, champion_score=0.50, test=None),
            False,
            "not promoting on a point estimate",
        ),
        (
            dict(challenger_score=0.60, champion_score=0.50, gates={"parity": False, "validation": True}),
            False,
            "gate(s) failed: parity",
        ),
        (dict(challenger_score=0.60, champion_score=0.50, gates={}), False, "no gate results"),
        (dict(challenger_score=0.60, champion_score=0.50, n_rows=499), False, "only 499 comparable rows"),
        (dict(challenger_score=0.51, champion_score=None), True, "no champion yet (challenger 51.00%"),
        (dict(challenger_score=0.51, champion_score=None, gates={"parity": False}), False, "gate(s) failed"),
        (dict(challenger_score=float("nan"), champion_score=0.5), False, "accuracy is nan"),
    ],
)
def test_decide_cases(kwargs, promote, fragment):
    args = dict(n_rows=2880, gates={"parity": True}, test=SIGNIFICANT) | kwargs
    d = decide(POLICY, **args)
    assert d.promote is promote and fragment in d.reason


def test_decide_baseline_requirement():
    strict = PromotionPolicy(require_beats_baselines=True)
    common = dict(
        champion_score=0.50, n_rows=2880, gates={"parity": True}, below_baselines={}, test=SIGNIFICANT
    )
    assert not decide(strict, challenger_score=0.52, baseline_score=0.525, **common).promote
    assert "no baseline score" in decide(strict, challenger_score=0.52, **common).reason
    ok = decide(strict, challenger_score=0.53, baseline_score=0.52, **common)
    assert ok.promote and ok.reason.endswith("; beats best baseline 52.00%")
    named = decide(strict, challenger_score=0.53, baseline_score=0.52, baseline_name="reversal", **common)
    assert named.reason.endswith("; beats best baseline reversal 52.00%")
    assert decide(
        POLICY, challenger_score=0.52, baseline_score=0.60, **common
    ).promote  # not required by this policy


def test_decide_refuses_below_the_best_rule_at_the_policy_horizon_and_names_withheld_ones():
    strict = PromotionPolicy(require_beats_baselines=True)  # policy horizon 1
    common = dict(
        challenger_score=0.53, champion_score=0.50, baseline_score=0.52, n_rows=2880, test=SIGNIFICANT
    )
    at_h1 = {1: "h1: model accuracy 0.5010 vs reversal 0.5093"}
    d = decide(strict, gates={"parity": True}, below_baselines=at_h1, **common)
    assert not d.promote and d.failed_gates == ("beats_baselines",)
    assert "below the best naive rule in walk-forward at the policy horizon" in d.reason
    assert "reversal 0.5093" in d.reason
    first = decide(strict, gates={"parity": True}, below_baselines=at_h1, **common | {"champion_score": None})
    assert not first.promote  # a first version too: no champion rather than one that loses to a rule
    at_h4 = {4: "h4: model accuracy 0.5041 vs reversal 0.5076"}
    ok = decide(strict, gates={"parity": True}, below_baselines=at_h4, **common)
    assert ok.promote and "h4 withheld from serving" in ok.reason and "reversal 0.5076" in ok.reason
    old = decide(strict, gates={"parity": True}, below_baselines=None, **common)
    assert not old.promote and "no walk-forward baseline verdict" in old.reason
    assert decide(strict, gates={"parity": True}, below_baselines={}, **common).promote
    assert decide(POLICY, gates={"parity": True}, below_baselines=at_h1, **common).promote  # policy off


def test_task_below_baselines_names_each_losing_horizon_with_direction():
    from pipelines.tasks import get_task

    ret = get_task("returns", (1, 2))
    summary = {
        "model.h1.accuracy": 0.53, "always_up.h1.accuracy": 0.51, "persistence.h1.accuracy": 0.48,
        "reversal.h1.accuracy": 0.52, "model.h2.accuracy": 0.505, "always_up.h2.accuracy": 0.509,
        "persistence.h2.accuracy": 0.49, "reversal.h2.accuracy": 0.505,
    }  # fmt: skip
    assert ret.below_baselines(summary) == {2: "h2: model accuracy 0.5050 vs always_up 0.5090"}
    assert ret.below_baselines(summary | {"model.h2.accuracy": 0.509}) != {}  # a tie is not a win
    vol = get_task("volatility", (1,))
    q = {"model.h1.qlike": 0.20, "persistence.h1.qlike": 0.30, "ewma.h1.qlike": 0.25, "har_rv.h1.qlike": 0.22}
    assert vol.below_baselines(q) == {}  # lower qlike is better
    assert list(vol.below_baselines(q | {"model.h1.qlike": 0.23})) == [1]


# ---------------------------------------------------------------- MLflow aliases and history


def _result(scale: float) -> TrainResult:
    """A registrable TrainResult whose ONNX graph is `returns = features @ [scale, 0]`."""
    w = onnx.numpy_helper.from_array(np.array([[scale], [0.0]], dtype=np.float32), name="w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["features", "w"], ["returns"])],
        "linear",
        [onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [None, 2])],
        [onnx.helper.make_tensor_value_info("returns", onnx.TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    opset = [onnx.helper.make_opsetid("", 15)]
    onnx_bytes = onnx.helper.make_model(graph, opset_imports=opset).SerializeToString()
    window = {
        "start": "2023-08-01T00:00:00+00:00",
        "end": "2023-08-02T00:00:00+00:00",
        "rows": 10,
        "data_hash": f"h{scale}",
    }
    manifest = Manifest(
        task="returns",
        model_name="returns-FILUSDT-1m",
        model_type="linear",
        symbol="FILUSDT",
        interval="1m",
        feature_set=FeatureSetSpec("two", 1, ["a", "b"], 0),
        input=TensorSpec("features", [None, 2]),
        outputs=[OutputSpec("returns", [None, 1], horizons=[1])],
        training=window,
        metrics={},
        code_version="test",
        created_at="2023-08-02T00:00:00+00:00",
        synthetic=True,
    )
    rng = np.random.default_rng(int(scale * 10))
    actual = rng.normal(size=(50, 1))
    acc = float((np.sign(actual * scale) == np.sign(actual)).mean())
    return TrainResult(
        task="returns",
        newest_metric="accuracy",
        newest_scores={1: (acc, 50)},
        model_type="linear",
        symbol="FILUSDT",
        interval="1m",
        feature_names=["a", "b"],
        horizons=[1],
        params={"scale": scale},
        fold_metrics=[],
        summary_metrics={},
        report={},
        newest_window=NewestWindow(np.arange(50, dtype=np.int64), actual * scale, actual),
        data_window=window,
        onnx_bytes=onnx_bytes,
        manifest=manifest,
        parity_max_abs=0.0,
        gates={"parity": True},
    )


def _moves(client, name):
    return [(m.alias, m.from_version, m.to_version, m.actor) for m in history(client, name)]


def test_champion_challenger_promote_history_rollback(client):
    first = log_training(client, _result(1.0))
    name = first.name
    m1 = assign_new_version(client, first, actor="retrain-flow")
    assert (m1.alias, m1.to_version) == (CHAMPION, "1") and current_aliases(client, name) == {CHAMPION: "1"}

    second = log_training(client, _result(2.0))
    m2 = assign_new_version(client, second, actor="retrain-flow")
    assert (m2.alias, m2.to_version) == (CHALLENGER, "2")
    assert current_aliases(client, name) == {CHAMPION: "1", CHALLENGER: "2"}

    decision = decide(
        POLICY,
        challenger_score=0.5231,
        champion_score=0.5170,
        n_rows=2880,
        gates={"parity": True},
        test=SIGNIFICANT,
    )
    moves = apply_decision(client, second, decision, actor="retrain-flow")
    made = [(m.alias, m.from_version, m.to_version) for m in moves]
    assert made == [(CHAMPION, "1", "2"), (CHALLENGER, "2", None)]
    assert current_aliases(client, name) == {CHAMPION: "2"}  # challenger slot cleared after promotion
    assert client.get_model_version(name, "2").tags["promotion.decision"] == "promote"
    (rec,) = decisions(client, name)  # recorded beside, not inside, the alias history
    assert (rec.version, rec.champion_version, rec.decision, rec.reason) == (
        "2",
        "1",
        "promote",
        decision.reason,
    )

    hist = history(client, name)
    assert _moves(client, name) == [
        (CHAMPION, None, "1", "retrain-flow"),
        (CHALLENGER, None, "2", "retrain-flow"),
        (CHAMPION, "1", "2", "retrain-flow"),
        (CHALLENGER, "2", None, "retrain-flow"),
    ]
    assert hist[0].reason == "first version of returns-FILUSDT-1m: no champion yet"
    assert hist[2].reason == decision.reason
    assert [m.time for m in hist] == sorted(m.time for m in hist) and len({m.time for m in hist}) == 4
    assert all(m.time.tzinfo is not None and m.time.utcoffset().total_seconds() == 0 for m in hist)

    back = rollback(client, name, reason="v2 misbehaves in production", actor="alice")
    assert (back.alias, back.from_version, back.to_version, back.actor) == (CHAMPION, "2", "1", "alice")
    assert current_aliases(client, name)[CHAMPION] == "1"
    assert history(client, name)[-1].reason == "v2 misbehaves in production"

    spans = served_intervals(client, name)
    assert [(s.version, s.end is None) for s in spans] == [("1", False), ("2", False), ("1", True)]
    assert spans[0].end == spans[1].start and spans[1].end == spans[2].start


def test_keep_decision_leaves_version_as_challenger(client):
    first = log_training(client, _result(1.0))
    assign_new_version(client, first, actor="flow")
    second = log_training(client, _result(2.0))
    assign_new_version(client, second, actor="flow")
    keep = decide(
        POLICY,
        challenger_score=0.5231,
        champion_score=0.5170,
        n_rows=2880,
        gates={"parity": True},
        test=NOISE,
    )
    moves_before = history(client, first.name)
    assert apply_decision(client, second, keep, actor="flow") == []  # already challenger: no alias move
    assert current_aliases(client, first.name) == {CHAMPION: "1", CHALLENGER: "2"}
    assert history(client, first.name) == moves_before  # the alias history holds moves only
    tags = client.get_model_version(first.name, "2").tags
    assert tags["promotion.decision"] == "keep" and "p=0.21" in tags["promotion.reason"]
    assert tags["promotion.test.p_value"] == "0.21" and tags["promotion.failed_gates"] == "significance"
    # ... and the refused decision is in the decision history, with its numbers
    (rec,) = decisions(client, first.name)
    assert (rec.version, rec.champion_version, rec.source, rec.decision) == ("2", "1", "daily", "keep")
    assert rec.metrics["test.p_value"] == 0.21 and rec.metrics["lift"] == pytest.approx(0.0061)
    assert rec.metrics["rows"] == 2880 and rec.failed_gates == "significance" and rec.actor == "flow"
    assert tags["promotion.record"] == rec.record_id
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(client, first.name, actor="bob")


def test_moves_made_in_the_mlflow_ui_are_synced(client):
    regs = [log_training(client, _result(s)) for s in (1.0, 2.0, 3.0)]
    name = regs[0].name
    assign_new_version(client, regs[0], actor="flow")
    client.set_registered_model_alias(name, CHAMPION, "3")  # a person, in the MLflow UI
    client.set_registered_model_alias(name, CHALLENGER, "2")

    synced = sync_external_moves(client, name)
    assert sorted((m.alias, m.from_version, m.to_version, m.actor, m.reason) for m in synced) == [
        (CHALLENGER, None, "2", "mlflow-ui", EXTERNAL_REASON),
        (CHAMPION, "1", "3", "mlflow-ui", EXTERNAL_REASON),
    ]
    assert sync_external_moves(client, name) == []  # idempotent

    client.delete_registered_model_alias(name, CHALLENGER)
    client.set_registered_model_alias(name, CHAMPION, "2")
    # set_alias syncs first, so its from_version is the true previous holder (2, not 3).
    move = set_alias(client, name, CHAMPION, "1", reason="manual fix", actor="carol")
    assert (move.from_version, move.to_version) == ("2", "1")
    assert _moves(client, name)[-3:] == [
        (CHALLENGER, "2", None, "mlflow-ui"),
        (CHAMPION, "3", "2", "mlflow-ui"),
        (CHAMPION, "2", "1", "carol"),
    ]
    assert rollback(client, name, actor="carol").to_version == "2"  # the holder before the current one


def test_alias_errors(client):
    reg = log_training(client, _result(1.0))
    with pytest.raises(RegistryError, match="no version 7"):
        set_alias(client, reg.name, CHAMPION, "7", reason="x", actor="me")
    with pytest.raises(RegistryError, match="needs an actor"):
        set_alias(client, reg.name, CHAMPION, "1", reason="x", actor="")
    with pytest.raises(RegistryError, match="does not exist"):
        current_aliases(client, "returns-NOPE-1m")
