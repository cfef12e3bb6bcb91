"""A ResNet50-v1.5-shaped ONNX model with random weights, shaped like MLPerf's ``resnet50_v1.onnx``.

The real MLPerf model is a user download; tests exercise that workload's path with this stand-in
(same input name, NCHW 224x224 input, 1001 classes with background at 0, softmax output). Its
weights are random, so no accuracy is ever claimed for it.
"""

from __future__ import annotations

import numpy as np
import onnx

from calibration.source.models.builder import GraphBuilder

STAGES = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]  # (bottleneck width, blocks, stride)
EXPANSION = 4
BN_EPS = 1.001e-5


def _random_bn(rng: np.random.Generator, name: str, channels: int, state: dict[str, np.ndarray]) -> None:
    state[f"{name}.weight"] = rng.uniform(0.5, 1.0, channels).astype(np.float32)
    state[f"{name}.bias"] = rng.normal(0.0, 0.1, channels).astype(np.float32)
    state[f"{name}.running_mean"] = rng.normal(0.0, 0.1, channels).astype(np.float32)
    state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)


def _conv_bn(g: GraphBuilder, rng: np.random.Generator, x: str, name: str, cin: int, cout: int,
             kernel: int, stride: int, relu: bool) -> str:
    fan_in = cin * kernel * kernel
    weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin, kernel, kernel)).astype(np.float32)
    state: dict[str, np.ndarray] = {}
    _random_bn(rng, f"{name}.bn", cout, state)
    y = g.conv(x, f"{name}.conv", weight, stride=stride)
    y = g.batch_norm(y, f"{name}.bn", state, BN_EPS)
    return g.relu(y, f"{name}.relu") if relu else y


def build_resnet50_shaped(seed: int = 0, input_name: str = "input_tensor:0",
                          output_name: str = "softmax_tensor:0", num_classes: int = 1001) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    g = GraphBuilder(input_name, 3, 224, 224)
    x = _conv_bn(g, rng, input_name, "stem", 3, 64, 7, 2, relu=True)
    x = g.max_pool(x, "stem.pool", kernel=3, stride=2, pad=1)
    cin = 64
    for stage, (width, blocks, first_stride) in enumerate(STAGES, start=1):
        for block in range(blocks):
            stride = first_stride if block == 0 else 1
            name = f"layer{stage}.{block}"
            shortcut = x
            if block == 0:
                shortcut = _conv_bn(g, rng, x, f"{name}.downsample", cin, width * EXPANSION, 1, stride, False)
            y = _conv_bn(g, rng, x, f"{name}.a", cin, width, 1, 1, relu=True)
            y = _conv_bn(g, rng, y, f"{name}.b", width, width, 3, stride, relu=True)  # v1.5: stride on 3x3
            y = _conv_bn(g, rng, y, f"{name}.c", width, width * EXPANSION, 1, 1, relu=False)
            x = g.relu(g.add(shortcut, y, f"{name}.add"), f"{name}.relu")
            cin = width * EXPANSION
    x = g.global_avg_pool_flat(x, "pool")
    weight = rng.normal(0.0, 0.01, (num_classes, cin)).astype(np.float32)
    logits = g.gemm(x, "fc", weight, np.zeros(num_classes, np.float32))
    g.softmax(logits, "softmax", out=output_name)
    return g.build("resnet50_v1_shaped", [(output_name, num_classes)])
