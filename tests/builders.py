"""Small float models and inputs that several test modules build."""

from __future__ import annotations

import numpy as np
import onnx

from calibration.source.models.builder import GraphBuilder
from workload.config import CalibrationConfig, ModelConfig, WorkloadConfig, with_overrides


def bn_model(seed: int = 0) -> onnx.ModelProto:
    """conv → BN → ReLU6 → depthwise → BN → ReLU → conv1x1 → BN → GAP → Gemm (the same for one seed)."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("x", 3, 12, 12)
    state = {**bn_state(rng, "bn1", 8), **bn_state(rng, "bn2", 8), **bn_state(rng, "bn3", 16)}
    a = g.relu6(g.batch_norm(g.conv("x", "c1", outlier_weights(rng, (8, 3, 3, 3), 0.3)), "bn1", state, 1e-5), "a1")
    b = g.relu(g.batch_norm(g.conv(a, "dw", outlier_weights(rng, (8, 1, 3, 3), 0.4), group=8), "bn2", state,
                            1e-5), "a2")
    c = g.batch_norm(g.conv(b, "pw", outlier_weights(rng, (16, 8, 1, 1), 0.3)), "bn3", state, 1e-5)
    g.gemm(g.global_avg_pool_flat(c, "pool"), "fc", outlier_weights(rng, (10, 16), 0.3), rng.normal(0, 0.1, 10),
           out="y")
    return g.build("bn_model", [("y", 10)])


def images(count: int) -> np.ndarray:
    """Fresh draws from one distribution: calibration and held-out sets differ only by sampling."""
    return (RNG.normal(0.2, 1.0, (count, 3, 12, 12)) + CHANNEL_OFFSET).astype(np.float32)


def mobile_block_model(seed: int = 0) -> onnx.ModelProto:
    """c1 → ReLU6 → dw → ReLU6 → c3 → c4 → Relu → c5 (no group attribute) → fork(Add, c6)."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: rng.normal(size=shape) * rng.uniform(0.05, 2.0, (shape[0],) + (1,) * (len(shape) - 1))  # noqa: E731
    b = GraphBuilder("input", 3, 12, 12)
    y = b.relu6(conv_bn(b, "input", "c1", w(8, 3, 3, 3), rng), "a1")
    y = b.relu6(conv_bn(b, y, "dw", w(8, 1, 3, 3), rng, group=8), "a2")
    y = conv_bn(b, y, "c3", w(6, 8, 1, 1), rng)
    y = b.relu(conv_bn(b, y, "c4", w(12, 6, 1, 1), rng), "a4")
    t5 = conv_bn(b, y, "c5", w(6, 12, 3, 3), rng)
    y = b.add(t5, conv_bn(b, t5, "c6", w(6, 6, 3, 3), rng), "res")
    model = b.build("block", [(b.gemm(b.global_avg_pool_flat(y, "head"), "fc", w(5, 6), rng.normal(size=5)), 5)])
    c5 = next(n for n in model.graph.node if n.name == "c5")
    kept = [a for a in c5.attribute if a.name != "group"]
    del c5.attribute[:]
    c5.attribute.extend(kept)
    return model


def block_images(n: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 12, 12)).astype(np.float32)


def config_with(techniques: str, weights: str = "per-tensor") -> WorkloadConfig:
    base = WorkloadConfig(name="synthetic", model=ModelConfig(source="onnx-file", num_classes=10, path="x.onnx"),
                          calibration=CalibrationConfig(range="minmax", batch_size=16))
    return with_overrides(base, weights, None, techniques)


RNG = np.random.default_rng(3)


def bn_state(rng: np.random.Generator, name: str, channels: int) -> dict[str, np.ndarray]:
    return {f"{name}.weight": rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels),
            f"{name}.bias": rng.normal(0.3, 1.0, channels), f"{name}.running_mean": rng.normal(0, 0.5, channels),
            f"{name}.running_var": rng.uniform(0.5, 2.0, channels)}


def outlier_weights(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Weights with one channel 8x larger, so per-tensor int8 is coarse for the others."""
    w = rng.normal(0, scale, shape)
    w[0] *= 8.0
    return w


CHANNEL_OFFSET = np.array([0.4, -0.3, 0.1]).reshape(1, 3, 1, 1)


def conv_bn(b: GraphBuilder, x: str, name: str, weight: np.ndarray, rng: np.random.Generator,
             group: int = 1) -> str:
    y = b.conv(x, name, weight, None, group=group)
    return b.batch_norm(y, f"{name}.bn", block_bn_state(f"{name}.bn", weight.shape[0], rng), 1e-5)


def block_bn_state(name: str, channels: int, rng: np.random.Generator,
                   beta_scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        f"{name}.weight": rng.uniform(0.2, 3.0, channels) * rng.choice([-1, 1], channels),
        f"{name}.bias": rng.normal(size=channels) * beta_scale,
        f"{name}.running_mean": rng.normal(size=channels) * 0.1,
        f"{name}.running_var": rng.uniform(0.5, 2.0, channels),
    }


TINY_CROP = 16


def tiny_classifier(num_classes: int = 1000, crop: int = TINY_CROP, seed: int = 0) -> onnx.ModelProto:
    """conv → ReLU → GAP → Gemm on [N, 3, crop, crop], output ``logits``: a seconds-long calibrate command."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("input", 3, crop, crop)
    y = g.relu(g.conv("input", "c1", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8)), "a1")
    g.gemm(g.global_avg_pool_flat(y, "pool"), "fc", rng.normal(0, 0.3, (num_classes, 8)),
           np.zeros(num_classes), out="logits")
    return g.build("tiny", [("logits", num_classes)])


def tiny_workload(model_path: str, images: str, num_classes: int = 1000, **calibration: object) -> WorkloadConfig:
    """An onnx-file workload around ``tiny_classifier`` on a few sample images (labels from their file names)."""
    from workload.config import workload_from_dict

    return workload_from_dict({
        "name": "tiny",
        "model": {"source": "onnx-file", "path": model_path, "num_classes": num_classes},
        "preprocessing": {"resize_shorter": TINY_CROP, "crop": TINY_CROP},
        "dataset": {"images": images},
        "calibration": {"techniques": ["fold_bn", "profile"], "batch_size": 2, **calibration},
    }, "tiny.yaml")
