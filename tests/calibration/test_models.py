"""Imported float models give the published predictions on the 1000 shared images.

Floors measured on each workload's preprocessing: MobileNetV2 83.9 % top-1 with torchvision's
antialiased resize (83.4 % with OpenCV's bilinear, which aliases; published torchvision figure on
ImageNet val: 71.9 %, these images run higher), EfficientNet-Lite0 88.2 % (OpenCV bilinear).
Bit-level equality with torch was checked once outside the tests with benchmarks/check_torch_equivalence.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.evaluate import accuracy
from calibration.graph.session import make_session, run_batches
from calibration.source.importer import import_float_model
from calibration.source.models.resnet50 import build_resnet50_shaped
from workload.config import load_workload
from workload.inputs import load_workload_data

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"mobilenetv2": (0.836, 0.955), "efficientnet-lite0": (0.878, 0.965)}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_float_model_top1_floor(name: str, sample_images: Path, wheel_cache: Path) -> None:
    config = load_workload(ROOT / "workloads" / f"{name}.yaml")
    model = import_float_model(config.model, wheel_cache, ROOT, config.preprocessing.crop)
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node)  # kept for later steps
    from dataclasses import replace

    config = replace(config, dataset=replace(config.dataset, images=str(sample_images)))
    dataset, _, images = load_workload_data(config, ROOT, show_progress=False)
    logits = run_batches(make_session(model, optimize=True), images)
    result = accuracy(logits, dataset.labels)
    top1_floor, top5_floor = FLOORS[name]
    assert result.top1 >= top1_floor and result.top5 >= top5_floor, result


def test_resnet50_shaped_stand_in_matches_mlperf_interface() -> None:
    model = build_resnet50_shaped()
    assert model.graph.input[0].name == "input_tensor:0"
    assert model.graph.output[0].name == "softmax_tensor:0"
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 53
    probabilities = make_session(model).run(None, {"input_tensor:0": np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert probabilities.shape == (2, 1001) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
