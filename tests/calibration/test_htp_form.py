"""The HTP form of the int8 model: built from the CPU model and encodings.json, with the same encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from calibration.quant.aimet import export_aimet_encodings, read_aimet_encodings
from calibration.quant.htp import htp_form
from calibration.quantize import quantize
from tests.builders import bn_model, config_with, images
from workload.errors import CalibrationError


def calibrated(tmp_path: Path, weights: str) -> tuple[onnx.ModelProto, Path]:
    result = quantize(bn_model(), config_with("fold_bn,profile", weights), images(32), show_progress=False)
    path = tmp_path / "encodings.json"
    export_aimet_encodings({**result.state.activations, **result.state.outputs}, result.params, path)
    return result.model, path


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("weights", ["per-channel", "per-tensor"])
def test_cpu_and_htp_models_carry_the_same_encodings(tmp_path: Path, weights: str) -> None:
    cpu, encodings_path = calibrated(tmp_path, weights)
    activations, params = read_aimet_encodings(encodings_path)
    htp = htp_form(cpu, activations)
    cpu_constants, htp_constants = constants(cpu), constants(htp)
    # Every int8 weight, int32 bias, scale and zero point of the CPU model is in the HTP model, unchanged.
    for name, value in cpu_constants.items():
        np.testing.assert_array_equal(htp_constants[name], value, err_msg=name)
        assert htp_constants[name].dtype == value.dtype, name
    # Every Q/DQ of the HTP model uses encodings.json's scale and zero point for its tensor.
    checked = 0
    for node in htp.graph.node:
        if node.op_type == "QuantizeLinear":
            encoding = activations[node.input[0].removesuffix(".float")]
        elif node.op_type == "DequantizeLinear" and node.input[0] in htp_constants:
            weight = node.input[0].rsplit(".", 1)[0]  # '<param>.int8' / '<param>.int32'
            encoding = params[weight]
            np.testing.assert_array_equal(htp_constants[node.input[0]], cpu_constants[node.input[0]])
        else:
            continue
        np.testing.assert_array_equal(htp_constants[node.input[1]], encoding.scale, err_msg=node.name)
        np.testing.assert_array_equal(htp_constants[node.input[2]], encoding.zero_point, err_msg=node.name)
        checked += 1
    assert checked >= 10
    # The only new constants are the logits' encoding, which encodings.json holds (profiled, full range).
    added = set(htp_constants) - set(cpu_constants)
    assert added == {"y.scale", "y.zero_point"}
    assert htp_constants["y.zero_point"].dtype == np.uint8


def test_htp_form_is_static_and_its_outputs_are_quantized(tmp_path: Path) -> None:
    cpu, encodings_path = calibrated(tmp_path, "per-channel")
    assert not cpu.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # the CPU model keeps its dynamic batch
    htp = htp_form(cpu, read_aimet_encodings(encodings_path)[0], batch=2)
    assert [d.dim_value for d in htp.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 12, 12]
    producer = {out: n for n in htp.graph.node for out in n.output}
    assert producer["y"].op_type == "DequantizeLinear"
    assert producer[producer["y"].input[0]].op_type == "QuantizeLinear"
    assert producer["y.float"].op_type == "Gemm"


def test_output_without_an_encoding_is_an_error(tmp_path: Path) -> None:
    cpu, encodings_path = calibrated(tmp_path, "per-tensor")
    activations = {k: v for k, v in read_aimet_encodings(encodings_path)[0].items() if k != "y"}
    with pytest.raises(CalibrationError, match="graph output 'y' .*Gemm.* no encoding"):
        htp_form(cpu, activations)


def test_encodings_file_round_trips(tmp_path: Path) -> None:
    result = quantize(bn_model(), config_with("fold_bn,profile", "per-channel"), images(16), show_progress=False)
    path = tmp_path / "encodings.json"
    export_aimet_encodings({**result.state.activations, **result.state.outputs}, result.params, path)
    activations, params = read_aimet_encodings(path)
    for name, encoding in {**result.state.activations, **result.state.outputs}.items():
        assert activations[name].dtype == encoding.dtype
        np.testing.assert_array_equal(activations[name].scale, encoding.scale)
        np.testing.assert_array_equal(activations[name].zero_point, encoding.zero_point)
    for name, encoding in result.params.items():
        assert (params[name].dtype, params[name].axis) == (encoding.dtype, encoding.axis)
        np.testing.assert_array_equal(params[name].scale, encoding.scale)


def test_malformed_encodings_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "encodings.json"
    path.write_text('{"activation_encodings": [{"name": "x"}]}')
    with pytest.raises(CalibrationError, match="not an encodings file"):
        read_aimet_encodings(path)
