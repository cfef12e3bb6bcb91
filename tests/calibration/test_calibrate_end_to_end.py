"""``calibrate`` end to end on the real MobileNetV2 and on the ResNet50-shaped stand-in."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibration.graph.io import save_model
from calibration.pipeline import calibrate
from calibration.source.models.resnet50 import build_resnet50_shaped
from workload.config import load_workload, with_overrides

ROOT = Path(__file__).resolve().parents[2]


def fused_ops(path: Path, tmp_path: Path) -> Counter:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.fixture
def sandbox(tmp_path: Path, wheel_cache: Path) -> Path:
    """A build root whose wheel cache is the project's, so no test downloads twice."""
    root = tmp_path / "root"
    (root / "build").mkdir(parents=True)
    wheel_cache.mkdir(parents=True, exist_ok=True)
    (root / "build" / "wheels").symlink_to(wheel_cache)
    return root


def test_mobilenetv2_calibrates_to_a_fused_faithful_int8_model(sandbox: Path, sample_images: Path,
                                                               tmp_path: Path) -> None:
    config = load_workload(ROOT / "workloads" / "mobilenetv2.yaml")
    config = replace(config, dataset=replace(config.dataset, images=str(sample_images)))
    assert [str(s) for s in config.calibration.techniques] == ["fold_bn", "cle:activation_aware_fused", "profile",
                                                                "gptq"]
    summary = calibrate(config, sandbox, show_progress=False)
    out = sandbox / "build" / "mobilenetv2"
    for name in ("model.fp32.onnx", "model.int8.onnx", "encodings.json", "calibration_report.json"):
        assert (out / name).is_file(), name
    assert summary.images == 1000
    assert summary.agreement >= 0.968, summary  # measured 97.3 % (gptq alone 97.0 %, neither 96.1 %)
    assert summary.int8_top1 >= summary.float_top1 - 0.01, summary
    report = json.loads(summary.report.read_text())
    assert report["calibration_images"] == 500
    assert [s["step"] for s in report["steps"]] == ["fold_bn", "cle:activation_aware_fused", "profile", "gptq"]
    assert report["steps"][0]["float_drift"] < 1e-5 and report["steps"][1]["float_drift"] < 1e-5  # float kept
    assert report["cle"]["sets"] and report["cle"]["relu6"] == "fused"
    layers = report["gptq"]["layers"]
    assert len(layers) == 53 and sum(r["gptq_error"] for r in layers) < sum(r["rtn_error"] for r in layers)
    ranges = report["activation_ranges"]
    encodings = json.loads(summary.encodings.read_text())
    assert {e["name"] for e in encodings["activation_encodings"]} == set(ranges)
    assert all(r["range_min"] <= 0.0 <= r["range_max"] for r in ranges.values())
    ops = fused_ops(summary.int8_model, tmp_path)
    assert ops["QLinearConv"] == 52 and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    assert ops["Min"] == 0, ops  # fused ReLU6: the int8 clamp covers every per-channel bound


def test_calibration_reuses_its_cache_and_is_deterministic(sandbox: Path, sample_images: Path) -> None:
    config = with_overrides(load_workload(ROOT / "workloads" / "mobilenetv2.yaml"), techniques="fold_bn,profile")
    config = replace(config, dataset=replace(config.dataset, images=str(sample_images)))
    first = calibrate(config, sandbox, show_progress=False)
    assert first.agreement >= 0.955, first  # measured 96.3 %
    caches = sorted((sandbox / "build" / "cache").iterdir())
    again = calibrate(config, sandbox, show_progress=False)
    assert sorted((sandbox / "build" / "cache").iterdir()) == caches  # preprocessed tensors reused
    assert again.agreement == first.agreement  # deterministic


def test_resnet50_path_with_a_stand_in_model(sandbox: Path, sample_images: Path, tmp_path: Path) -> None:
    """The MLPerf ResNet50 workload's path: onnx-file source, 1001 classes, val_map and a calibration list."""
    images = tmp_path / "val"
    images.mkdir()
    names = sorted(p.name for p in sample_images.iterdir())[:8]
    for i, name in enumerate(names):
        shutil.copy(sample_images / name, images / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    (images / "val_map.txt").write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {i}\n" for i in range(8)))
    (tmp_path / "cal.txt").write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG\n" for i in range(0, 8, 2)))
    model_path = sandbox / "build" / "downloads" / "resnet50_v1.onnx"
    save_model(build_resnet50_shaped(), model_path)
    config = load_workload(ROOT / "workloads" / "resnet50.yaml")
    config = replace(config, dataset=replace(config.dataset, images=str(images), val_map=str(images / "val_map.txt"),
                                             calibration_list=str(tmp_path / "cal.txt")),
                     calibration=replace(config.calibration, batch_size=2))
    summary = calibrate(config, sandbox, show_progress=False)
    assert summary.images == 8  # random weights: no accuracy is claimed, only that the path works
    ops = fused_ops(summary.int8_model, tmp_path)
    assert ops["QLinearConv"] == 53 and ops["Conv"] == 0, ops
    report = json.loads(summary.report.read_text())
    assert report["calibration_images"] == 4
    outputs = ort.InferenceSession(str(summary.int8_model)).run(None, {"input_tensor:0": np.zeros((1, 3, 224, 224),
                                                                                                np.float32)})
    assert outputs[0].shape == (1, 1001)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_missing_resnet50_model_is_one_line(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "workloads", tmp_path / "workloads")
    result = run_cli("calibrate", "--workload", "resnet50", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "resnet50_v1.onnx: model file not found" in errors[0]
    assert "https://zenodo.org/record/2592612/files/resnet50_v1.onnx" in errors[0]


def test_unknown_workload_and_technique_are_one_line(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "workloads", tmp_path / "workloads")
    result = run_cli("calibrate", "--workload", "alexnet", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: unknown workload 'alexnet'")
    result = run_cli("calibrate", "--workload", "resnet50", "--techniques", "fold_bn,sorcery", cwd=tmp_path)
    assert result.returncode == 2 and "unknown technique 'sorcery'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
