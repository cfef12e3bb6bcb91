"""The calibrate command on a tiny onnx-file workload: results published together or not at all (issue 17 case 1),
and a model that does not fit the workload refused before any inference, naming the file (cases 4 to 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import calibration.pipeline as pipeline
from calibration.graph.io import save_model
from harness.workflow import calibrated_with
from tests.builders import TINY_CROP, tiny_classifier, tiny_workload
from workload.config import WorkloadConfig, with_overrides
from workload.errors import CalibrationError
from workload.files import sha256_of

OUTPUTS = ("model.fp32.onnx", "model.int8.onnx", "encodings.json", "calibration_report.json")


@pytest.fixture
def tiny(tmp_path: Path, sample_images: Path) -> tuple[Path, WorkloadConfig]:
    """A root with 6 sample images and the tiny classifier, and its workload (mean_minmax)."""
    root, images = tmp_path / "root", tmp_path / "images"
    images.mkdir()
    for name in sorted(p.name for p in sample_images.iterdir())[:6]:
        shutil.copy(sample_images / name, images / name)
    save_model(tiny_classifier(), root / "models" / "tiny.onnx")
    return root, tiny_workload("models/tiny.onnx", str(images))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_interrupted_evaluation_leaves_the_previous_result_whole(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 1: Ctrl-C during step [5/5] once left the new model beside the old report, which then passed as fresh."""
    root, config = tiny
    pipeline.calibrate(config, root, show_progress=False)
    out = root / "build" / "tiny"
    before = {name: sha256_of(out / name) for name in OUTPUTS}
    minmax = with_overrides(config, range_method="minmax")

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_batches", interrupted)  # step [5/5], the evaluation
    with pytest.raises(KeyboardInterrupt):
        pipeline.calibrate(minmax, root, show_progress=False)
    assert {name: sha256_of(out / name) for name in OUTPUTS} == before  # nothing of the minmax run is visible
    assert calibrated_with(config, root) and not calibrated_with(minmax, root)
    assert leftovers(out) == []  # the staging folder is gone


def test_interrupted_publish_leaves_no_finished_report(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    root, config = tiny
    pipeline.calibrate(config, root, show_progress=False)
    minmax = with_overrides(config, range_method="minmax")
    original = Path.replace

    def second_rename_interrupted(self: Path, target: Path) -> Path:
        published = ".staging-" in str(self) and ".staging-" not in str(target)
        if published and Path(target).name == "model.int8.onnx":  # fp32 model in place, the new report not yet
            raise KeyboardInterrupt
        return original(self, target)

    monkeypatch.setattr(Path, "replace", second_rename_interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.calibrate(minmax, root, show_progress=False)
    monkeypatch.undo()
    report = json.loads((root / "build" / "tiny" / "calibration_report.json").read_text())
    assert report["status"] == "incomplete"
    assert not calibrated_with(config, root) and not calibrated_with(minmax, root)  # `make run` recalibrates


def test_a_model_changed_after_calibration_is_stale(tiny) -> None:
    root, config = tiny
    pipeline.calibrate(config, root, show_progress=False)
    assert calibrated_with(config, root)
    shutil.copy(root / "build" / "tiny" / "model.fp32.onnx", root / "build" / "tiny" / "model.int8.onnx")
    assert not calibrated_with(config, root)  # the report's sha256 no longer matches


def nhwc_model() -> onnx.ModelProto:
    node = helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2])
    pool = helper.make_node("GlobalAveragePool", ["t"], ["logits"])
    return helper.make_model(helper.make_graph(
        [node, pool], "nhwc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16, 16, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 1, 1])]))


def lstm_model() -> onnx.ModelProto:
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 16, 3], [0.1] * 48)
    r = helper.make_tensor("R", TensorProto.FLOAT, [1, 16, 4], [0.1] * 64)
    node = helper.make_node("LSTM", ["input", "W", "R"], ["logits"], hidden_size=4)
    return helper.make_model(helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["T", "N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [w, r]))


def fixed_input(shape: list) -> onnx.ModelProto:
    model = tiny_classifier()
    model.graph.input[0].type.tensor_type.shape.Clear()
    for value in shape:
        dim = model.graph.input[0].type.tensor_type.shape.dim.add()
        if isinstance(value, int):
            dim.dim_value = value
        else:
            dim.dim_param = value
    return model


@pytest.mark.parametrize(("model", "message"), [
    (fixed_input(["N", 3, 128, 128]), r"wants input 'input' \[N, 3, 128, 128\], another image size; the workload "
                                      r"gives float32 \[N, 3, 16, 16\]"),
    (fixed_input([1, 3, TINY_CROP, TINY_CROP]), r"\[1, 3, 16, 16\], a fixed batch of 1, which cannot take"),
    (nhwc_model(), r"wants input 'input' \[N, 16, 16, 3\] \(NHWC\?\), not 3 channels first"),
    (fixed_input(["N", 3]), r"\[N, 3\] \(rank 2, not an image batch\)"),
    (lstm_model(), r"\[T, N, 3\] \(rank 3, not an image batch\)"),
    (tiny_classifier(num_classes=10), r"output 'logits' is \[batch, 10\], but the workload has model.num_classes 1000"),
], ids=["128x128", "batch-1", "nhwc", "rank-2", "lstm", "10-classes"])
def test_a_model_that_does_not_fit_the_workload_is_one_line_before_inference(tiny, model, message,
                                                                             monkeypatch) -> None:
    """Cases 4 and 5: these ended in an ONNX Runtime traceback, or (10 classes) calibrated silently."""
    root, config = tiny
    save_model(model, root / "models" / "tiny.onnx")
    monkeypatch.setattr(pipeline, "load_workload_data", lambda *a, **k: pytest.fail("images loaded"))
    with pytest.raises(CalibrationError, match=message) as caught:
        pipeline.calibrate(config, root, show_progress=False)
    assert str(caught.value).startswith(str(root / "models" / "tiny.onnx"))
    assert not (root / "build" / "tiny").exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 10])
def test_an_empty_or_garbage_model_file_is_named(tiny, content: bytes) -> None:
    """Case 6: a 0-byte file gave "model '' must have exactly one image input, has []"."""
    root, config = tiny
    (root / "models" / "tiny.onnx").write_bytes(content)
    with pytest.raises(CalibrationError, match=r"tiny.onnx: not a valid ONNX model"):
        pipeline.calibrate(config, root, show_progress=False)
