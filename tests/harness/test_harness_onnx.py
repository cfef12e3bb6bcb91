"""The ONNX Runtime backend through a real LoadGen accuracy run, and the results table over the tree."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.graph.session import EXACT_INT8
from harness.loadgen.backend import OnnxRuntimeBackend, session_options
from harness.loadgen.runner import RunSpec, run_scenario
from harness.loadgen.scenarios import DurationProfile
from harness.results_table import collect, write_table
from workload.config import HarnessConfig

TINY = DurationProfile("tiny", 300, {"Offline": 1, "Server": 512, "SingleStream": 64, "MultiStream": 662})


def tiny_model(path: Path, classes: int = 11) -> Path:
    """A linear classifier over (N, 3, 4, 4) inputs, with dynamic batch."""
    weight = np.random.default_rng(0).normal(size=(48, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_loadgen_accuracy_matches_a_plain_onnxruntime_loop(tmp_path: Path) -> None:
    cfg = HarnessConfig(system="test", offline_batch_size=7, intra_op_threads=1)
    model = tiny_model(tmp_path / "tiny.onnx")
    tensors = np.random.default_rng(1).normal(size=(50, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "tensors.npy", tensors)
    plain = OnnxRuntimeBackend(model, cfg, "logits").predict(tensors).argmax(axis=1) - 1  # label offset 1
    labels = plain.copy()
    labels[:10] = (labels[:10] + 1) % 10  # 10 deliberate misses
    spec = RunSpec("tiny", "Offline", "accuracy", TINY, cfg, tmp_path / "tensors.npy", labels, 1,
                   functools.partial(OnnxRuntimeBackend, model, cfg, "logits"), tmp_path / "results")
    summary = run_scenario(spec)
    assert summary["accuracy"]["mlperf_line"] == "accuracy=80.000%, good=40, total=50"

    run_scenario(RunSpec("tiny", "SingleStream", "performance", TINY, cfg, tmp_path / "tensors.npy", labels, 1,
                         functools.partial(OnnxRuntimeBackend, model, cfg, "logits"), tmp_path / "results"))
    table = collect(tmp_path / "results")
    assert table[["scenario", "mode"]].values.tolist() == [["Offline", "accuracy"], ["SingleStream", "performance"]]
    assert table.loc[0, "top1_pct"] == 80.0 and table.loc[1, "validity"] == "VALID" and table.loc[1, "p90_ms"] > 0
    write_table(table, tmp_path / "results.csv")
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("system,workload,scenario,mode")


def test_loadgen_sessions_use_the_exact_int8_kernels() -> None:
    """The LoadGen session runs the int8 model as make_session does: without int16 saturation on x86 CPUs that
    lack VNNI (tests/calibration/test_qdq.py shows the difference on such a CPU)."""
    options = session_options(HarnessConfig())
    assert options.get_session_config_entry(EXACT_INT8[0]) == EXACT_INT8[1]
