"""EfficientNet-Lite0 as ONNX, from the ``efficientnet-lite-pytorch`` state dict layout.

Lite uses ReLU6 (never Swish), no squeeze-excite, and TensorFlow "same" padding, which for a
fixed 224x224 input is a static, possibly asymmetric, pad folded into each Conv.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from calibration.source.models.builder import GraphBuilder

# (repeats, kernel, stride, expansion, input channels, output channels) for Lite0 (width = depth = 1.0).
LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
IMAGE_SIZE = 224


def same_pads(size: int, kernel: int, stride: int) -> tuple[tuple[int, int, int, int], int]:
    """TF 'same' padding for a square input: ((top, left, bottom, right), output size)."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return (pad // 2, pad // 2, pad - pad // 2, pad - pad // 2), out


def _conv_bn(g: GraphBuilder, x: str, state: dict[str, np.ndarray], conv: str, bn: str,
             size: int, stride: int = 1, depthwise: bool = False) -> tuple[str, int]:
    weight = state[f"{conv}.weight"]
    pads, out_size = same_pads(size, weight.shape[2], stride)
    y = g.conv(x, conv, weight, stride=stride, pads=pads, group=weight.shape[0] if depthwise else 1)
    return g.batch_norm(y, bn, state, BN_EPS), out_size


def build_efficientnet_lite0(state: dict[str, np.ndarray], input_name: str = "input",
                             output_name: str = "logits") -> onnx.ModelProto:
    g = GraphBuilder(input_name, 3, IMAGE_SIZE, IMAGE_SIZE)
    x, size = _conv_bn(g, input_name, state, "_conv_stem", "_bn0", IMAGE_SIZE, stride=2)
    x = g.relu6(x, "_stem_relu6")
    index = 0
    for repeats, _kernel, first_stride, expansion, in_channels, out_channels in LITE0_BLOCKS:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            block_in_channels = in_channels if repeat == 0 else out_channels
            prefix = f"_blocks.{index}"
            block_in = x
            if expansion != 1:
                x, size = _conv_bn(g, x, state, f"{prefix}._expand_conv", f"{prefix}._bn0", size)
                x = g.relu6(x, f"{prefix}._expand_relu6")
            x, size = _conv_bn(g, x, state, f"{prefix}._depthwise_conv", f"{prefix}._bn1", size,
                               stride=stride, depthwise=True)
            x = g.relu6(x, f"{prefix}._depthwise_relu6")
            x, size = _conv_bn(g, x, state, f"{prefix}._project_conv", f"{prefix}._bn2", size)
            if stride == 1 and block_in_channels == out_channels:
                x = g.add(block_in, x, f"{prefix}.add")
            index += 1
    x, size = _conv_bn(g, x, state, "_conv_head", "_bn1", size)
    x = g.relu6(x, "_head_relu6")
    x = g.global_avg_pool_flat(x, "_avg_pooling")
    x = g.gemm(x, "_fc", state["_fc.weight"], state["_fc.bias"], out=output_name)
    return g.build("efficientnet_lite0", [(output_name, state["_fc.weight"].shape[0])])
