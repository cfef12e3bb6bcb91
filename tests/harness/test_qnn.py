"""The QNN HTP backend on onnxruntime-qnn's x86 emulator (CI installs the [qnn] extra: nothing here is skipped).

Tiny models keep these fast: the emulator takes about a second per MobileNetV2 image."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from calibration.graph.io import save_model
from calibration.graph.session import make_session
from calibration.quant.aimet import export_aimet_encodings, read_aimet_encodings
from calibration.quant.htp import htp_form
from calibration.quantize import quantize
from harness.loadgen import qnn
from harness.loadgen.backend import BackendError
from harness.loadgen.qnn import QnnHtpBackend, export_context, htp_session, rejected_nodes
from harness.loadgen.runner import RunSpec, result_dir, run_scenario
from harness.loadgen.scenarios import DurationProfile
from tests.builders import bn_model, config_with, images
from workload.config import HarnessConfig, QnnConfig, workload_from_dict
from workload.errors import CalibrationError, WorkloadError
from workload.files import save_array
from workload.result_set import ResultSet, read_finished

CFG = QnnConfig()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model's CPU int8 model, its HTP form, and the HTP form's static model without the output Q/DQ."""
    root = tmp_path_factory.mktemp("qnn")
    result = quantize(bn_model(), config_with("fold_bn,profile", "per-channel"), images(32), show_progress=False)
    encodings = root / "encodings.json"
    export_aimet_encodings({**result.state.activations, **result.state.outputs}, result.params, encodings)
    paths = {"cpu": root / "model.int8.onnx", "htp": root / "model.int8.qnn.onnx", "static": root / "static.onnx"}
    save_model(result.model, paths["cpu"])
    activations, _ = read_aimet_encodings(encodings)
    save_model(htp_form(result.model, activations), paths["htp"])
    save_model(_static_only(result.model), paths["static"])
    return paths


def _static_only(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in (*copy.graph.input, *copy.graph.output, *copy.graph.value_info):
        if len(value.type.tensor_type.shape.dim):
            value.type.tensor_type.shape.dim[0].dim_value = 1
    return copy


def test_dynamic_batch_model_is_refused_not_run_on_the_cpu(models: dict[str, Path]) -> None:
    """The trap: with fallback, this session would run every node on ONNX Runtime's CPU kernels."""
    with pytest.raises(BackendError) as caught:
        htp_session(models["cpu"], CFG)
    message = str(caught.value)
    assert "CPU fallback is disabled" in message and str(models["cpu"]) in message
    assert "(Conv)" in message and "\n" not in message


def test_float_classifier_output_is_named_with_its_op_type(models: dict[str, Path]) -> None:
    """Static batch but a float Gemm output: QNN rejects exactly the classifier, and the error names it."""
    with pytest.raises(BackendError, match=r"does not take 1 node\(s\).*'fc' \(Gemm\)"):
        htp_session(models["static"], CFG)


def test_htp_form_runs_whole_and_close_to_the_cpu_int8_model(models: dict[str, Path]) -> None:
    session = htp_session(models["htp"], CFG)
    cpu = make_session(onnx.load(str(models["cpu"])), optimize=True)
    x = images(4)
    htp_out = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(4)])
    cpu_out = cpu.run(None, {"x": x})[0]
    step = float(np.max(np.abs(cpu_out))) / 100  # a few output LSBs
    assert htp_out.shape == cpu_out.shape
    assert np.max(np.abs(htp_out - cpu_out)) < 5 * step


def test_context_model_reproduces_its_session(models: dict[str, Path], tmp_path: Path) -> None:
    context = tmp_path / "model.int8.qnn_ctx.onnx"
    exporting = export_context(models["htp"], context, CFG)
    ops = [n.op_type for n in onnx.load(str(context)).graph.node]
    assert ops == ["EPContext"]
    reloaded = htp_session(context, CFG)
    for image in images(3):
        x = {"x": image[None]}
        np.testing.assert_array_equal(reloaded.run(None, x)[0], exporting.run(None, x)[0])
    assert [p.name for p in tmp_path.iterdir()] == [context.name]  # no partial file left


def test_failed_context_export_leaves_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    context = tmp_path / "model.int8.qnn_ctx.onnx"
    with pytest.raises(BackendError, match="Gemm"):
        export_context(models["static"], context, CFG)
    assert list(tmp_path.iterdir()) == []


def test_loadgen_singlestream_accuracy_on_htp(models: dict[str, Path], tmp_path: Path) -> None:
    x = images(6)
    reference = np.concatenate([htp_session(models["htp"], CFG).run(None, {"x": x[i:i + 1]})[0] for i in range(6)])
    labels = reference.argmax(axis=1)
    labels[0] = (labels[0] + 1) % 10  # one wrong answer: 5 of 6 must be scored
    save_array(tmp_path / "tensors.npy", x)
    harness = HarnessConfig(system="qnn-htp-emulated", backend="qnn-htp")
    spec = RunSpec(workload="tiny", scenario="SingleStream", mode="accuracy",
                   profile=DurationProfile("tiny", 100, {"SingleStream": 6}), harness=harness,
                   tensors_path=tmp_path / "tensors.npy", labels=labels, label_offset=0,
                   backend_factory=functools.partial(QnnHtpBackend, models["htp"], harness, "y"),
                   results_root=tmp_path / "results", note=qnn.EMULATOR_NOTE)
    summary = run_scenario(spec)
    final = result_dir(tmp_path / "results", "qnn-htp-emulated", "tiny", "SingleStream", "accuracy")
    assert (final / "accuracy.txt").read_text() == "accuracy=83.333%, good=5, total=6\n"
    assert "emulator" in summary["note"] and summary["system"] == "qnn-htp-emulated"


def test_backend_splits_batches_into_the_static_batch(models: dict[str, Path]) -> None:
    backend = QnnHtpBackend(models["htp"], HarnessConfig(backend="qnn-htp"), "y")
    x = images(3)
    np.testing.assert_array_equal(backend.predict(x)[1:2], backend.predict(x[1:2]))


def test_missing_extra_is_one_line_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)  # import now raises ImportError
    with pytest.raises(BackendError, match=r"pip install -e '\.\[qnn\]'"):
        htp_session(Path(__file__), CFG)


def test_rejected_nodes_are_read_from_the_verbose_log() -> None:
    log = ("Validation FAILED for 3 nodes in OrtNodeUnit (Gemm) :\n"
           "\tOperator type: DequantizeLinear Node name: w.DequantizeLinear Node index: 3\n"
           "\tOperator type: Gemm Node name: classifier.1 Node index: 4\n"
           "\tREASON : Failed to add node.\n"
           "[E:onnxruntime] Unsupported nodes in QNN EP: { name: classifier.1, type: Gemm }\n")
    assert [(n.name, n.op_type, n.reason) for n in rejected_nodes(log)] == [
        ("classifier.1", "Gemm", "Failed to add node")]


@pytest.mark.parametrize(("key", "value"), [("htp_arch", 70), ("performance_mode", "turbo"), ("batch", 0),
                                            ("unknown", 1)])
def test_qnn_options_are_checked_by_the_schema(key: str, value: object) -> None:
    data = {"name": "w", "model": {"source": "onnx-file", "num_classes": 10, "path": "m.onnx"},
            "harness": {"backend": "qnn-htp", "qnn": {key: value}}}
    with pytest.raises(WorkloadError, match=r"harness\.qnn"):
        workload_from_dict(data, "w.yaml")


def test_provider_options_come_from_the_workload() -> None:
    options = qnn.provider_options(QnnConfig(htp_arch=73, soc_model=60, performance_mode="balanced"))
    assert options["htp_arch"] == "73" and options["soc_model"] == "60"
    assert options["htp_performance_mode"] == "balanced" and options["backend_path"].endswith("libQnnHtp.so")


def staged_calibration(result_set: ResultSet, with_logits: bool) -> tuple[Path, Path, object]:
    """A small calibration staged in ``result_set`` (the logits' encoding left out unless ``with_logits``)."""
    result = quantize(bn_model(), config_with("fold_bn,profile", "per-tensor"), images(32), show_progress=False)
    encodings = result_set.stage("encodings.json")
    outputs = result.state.outputs if with_logits else {}
    export_aimet_encodings({**result.state.activations, **outputs}, result.params, encodings)
    model = result_set.stage("model.int8.onnx")
    save_model(result.model, model)
    return model, encodings, result


def test_htp_target_writes_its_files_together_and_reports_htp_figures(tmp_path: Path) -> None:
    from calibration.pipeline import Evaluated
    from harness.htp_target import CONTEXT_MODEL, QNN_MODEL, HtpTarget

    with ResultSet(tmp_path, "report.json") as result_set:
        model, encodings, result = staged_calibration(result_set, with_logits=True)
        x = images(5)
        cpu_logits = make_session(result.model).run(None, {"x": x})[0]
        float_logits = make_session(bn_model()).run(None, {"x": x})[0]
        run = Evaluated(tmp_path, result_set.stage, model, encodings, x, float_logits.argmax(axis=1), 0,
                        float_logits, cpu_logits)
        section = HtpTarget(CFG, eval_limit=3, show_progress=False)(run)["htp"]
        assert not (tmp_path / QNN_MODEL).exists()  # staged: nothing is visible before the publish
        result_set.publish({"htp": section})
    assert section["images"] == 3 and section["figures"]["float_top1"] == 1.0
    assert "emulator" in section["note"] and section["models"] == [QNN_MODEL, CONTEXT_MODEL]
    assert len(section["parity"]) == len(result.state.activations) + 1  # every activation, and the logits
    assert {p.name for p in tmp_path.iterdir()} == {"encodings.json", "model.int8.onnx", QNN_MODEL, CONTEXT_MODEL,
                                                   "plots", "report.json"}
    assert read_finished(tmp_path, "report.json") is not None


def test_failed_htp_target_leaves_no_htp_file(tmp_path: Path) -> None:
    from calibration.pipeline import Evaluated
    from harness.htp_target import HtpTarget

    with pytest.raises(CalibrationError, match="no encoding"), ResultSet(tmp_path, "report.json") as result_set:
        model, encodings, _ = staged_calibration(result_set, with_logits=False)
        x = images(2)
        run = Evaluated(tmp_path, result_set.stage, model, encodings, x, np.zeros(2, int), 0, x, x)
        HtpTarget(CFG, show_progress=False)(run)
    assert list(tmp_path.iterdir()) == []  # the staged calibration went with the failed target
