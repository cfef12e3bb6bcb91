"""torchvision's MobileNetV2 (width 1.0) as ONNX, from its state dict."""

from __future__ import annotations

import numpy as np
import onnx

from calibration.source.models.builder import GraphBuilder

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTINGS = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]
BN_EPS = 1e-5


def _conv_bn_relu6(g: GraphBuilder, x: str, state: dict[str, np.ndarray], prefix: str, stride: int) -> str:
    weight = state[f"{prefix}.0.weight"]
    group = weight.shape[0] if weight.shape[1] == 1 and weight.shape[0] > 1 else 1
    y = g.conv(x, f"{prefix}.0", weight, stride=stride, group=group)
    y = g.batch_norm(y, f"{prefix}.1", state, BN_EPS)
    return g.relu6(y, f"{prefix}.2")


def build_mobilenetv2(state: dict[str, np.ndarray], input_name: str = "input",
                      output_name: str = "logits") -> onnx.ModelProto:
    g = GraphBuilder(input_name, 3, 224, 224)
    x = _conv_bn_relu6(g, input_name, state, "features.0", stride=2)
    in_channels = 32
    index = 1
    for expansion, out_channels, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            block_in = x
            prefix = f"features.{index}.conv"
            layer = 0
            if expansion != 1:
                x = _conv_bn_relu6(g, x, state, f"{prefix}.{layer}", stride=1)
                layer += 1
            x = _conv_bn_relu6(g, x, state, f"{prefix}.{layer}", stride=stride)
            x = g.conv(x, f"{prefix}.{layer + 1}", state[f"{prefix}.{layer + 1}.weight"])
            x = g.batch_norm(x, f"{prefix}.{layer + 2}", state, BN_EPS)
            if stride == 1 and in_channels == out_channels:
                x = g.add(block_in, x, f"features.{index}.add")
            in_channels = out_channels
            index += 1
    x = _conv_bn_relu6(g, x, state, f"features.{index}", stride=1)
    x = g.global_avg_pool_flat(x, "avgpool")
    x = g.gemm(x, "classifier.1", state["classifier.1.weight"], state["classifier.1.bias"], out=output_name)
    return g.build("mobilenetv2", [(output_name, state["classifier.1.weight"].shape[0])])
