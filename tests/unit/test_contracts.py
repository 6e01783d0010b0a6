"""pipelines.contracts: the YAML loader, the ONNX session builder and runner, the prediction-log
contract and the alias names, and the dependency rules that keep serving off the training stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from pydantic import BaseModel

from pipelines.contracts.errors import ConfigError
from pipelines.contracts.onnx import make_session, run_onnx
from pipelines.contracts.predlog import DEFAULT_SUBDIR, default_log_dir
from pipelines.contracts.yamlio import parse_config, read_yaml

REPO = Path(__file__).resolve().parents[2]


def two_output_graph(first: str = "log_variance", second: str = "confidence") -> bytes:
    """features float32 [N, 2] → `first` = features, `second` = -features."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])
    y1 = helper.make_tensor_value_info(first, TensorProto.FLOAT, [None, 2])
    y2 = helper.make_tensor_value_info(second, TensorProto.FLOAT, [None, 2])
    nodes = [
        helper.make_node("Identity", ["features"], [first]),
        helper.make_node("Neg", ["features"], [second]),
    ]
    graph = helper.make_graph(nodes, "two_outputs", [x], [y1, y2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_run_onnx_defaults_to_the_first_output_and_takes_a_named_one():
    g = two_output_graph()
    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    first = run_onnx(g, X, batch_size=2)
    assert first.dtype == np.float64 and np.array_equal(first, X)
    assert np.array_equal(run_onnx(g, X, output="confidence"), -X)
    assert run_onnx(g, X[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match="no output 'returns'.*log_variance"):
        run_onnx(g, X, output="returns")


def test_make_session_from_bytes_or_path_with_threads_or_given_options(tmp_path):
    g = two_output_graph()
    path = tmp_path / "model.onnx"
    path.write_bytes(g)
    for source in (g, path, str(path)):
        sess = make_session(source, threads=2)
        assert [o.name for o in sess.get_outputs()] == ["log_variance", "confidence"]
        assert sess.get_providers() == ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = make_session(g, options=opts)
    assert run_onnx(sess, np.ones((3, 2), np.float32)).shape == (3, 2)  # an open session is reused


def test_read_yaml_and_parse_config_name_the_file_and_the_field(tmp_path):
    class Cfg(BaseModel):
        n: int = 1

    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(bad)
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("n: many\n")
    with pytest.raises(ConfigError, match=r"ok.yaml: n: "):
        parse_config(Cfg, read_yaml(ok), ok)
    ok.write_text("")
    assert parse_config(Cfg, read_yaml(ok), ok).n == 1


def test_default_prediction_log_dir_matches_serving(tmp_path):
    from serving.config import load_serving_config

    home, configs = tmp_path / "home", tmp_path / "configs"
    configs.mkdir()
    assert default_log_dir(configs, home) == home / DEFAULT_SUBDIR  # no serving.yaml: the default
    (configs / "serving.yaml").write_text("routing: {mode: shadow}\n")
    assert default_log_dir(configs, home) == home / DEFAULT_SUBDIR
    (configs / "serving.yaml").write_text(f"prediction_log: {{directory: {tmp_path / 'logs'}}}\n")
    assert default_log_dir(configs, home) == tmp_path / "logs"
    assert load_serving_config(configs_dir=configs).prediction_log.directory == tmp_path / "logs"
    shipped = REPO / "configs"  # the repository's own serving.yaml: both read the same directory
    served = load_serving_config(configs_dir=shipped).prediction_log.directory
    assert default_log_dir(shipped, home) == (served or home / DEFAULT_SUBDIR)


def test_alias_names_have_one_definition():
    from pipelines.contracts import aliases
    from registry import client

    assert (client.CHAMPION, client.CHALLENGER) == (aliases.CHAMPION, aliases.CHALLENGER)


def test_review_and_registry_modules_import_no_serving_code():
    """flows.review and registry read the prediction log through the contracts, not serving."""
    code = (
        "import sys, flows.review, registry.reviews, registry.runs, registry.promotion; "
        "print(sorted(m for m in sys.modules if m == 'serving' or m.startswith('serving.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
