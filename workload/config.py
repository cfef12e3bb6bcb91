"""Workload YAML schema: dataclasses, validated once at the boundary, unknown keys rejected.

Every mistake is reported as one ``WorkloadError`` line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workload.errors import WorkloadError
from workload.paths import check_name
from workload.schema import bind, bind_value, read_yaml

WeightGranularity = Literal["per-channel", "per-tensor"]
RangeMethod = Literal["minmax", "mean_minmax", "percentile", "mse", "entropy"]
RANGE_METHODS: tuple[str, ...] = typing.get_args(RangeMethod)
WEIGHT_GRANULARITIES: tuple[str, ...] = typing.get_args(WeightGranularity)

@dataclass(frozen=True)
class TechniqueStep:
    """One entry of a technique list, parsed for its form only: ``calibration.steps`` checks the name, the
    option and the order against its registry, and names ``where`` the entry was written when they are wrong."""

    name: str
    option: str | None = None
    where: str = field(default="", compare=False)

    @classmethod
    def from_yaml(cls, value: Any, where: str) -> TechniqueStep:
        return parse_technique(value, where)

    def __str__(self) -> str:
        return self.name if self.option is None else f"{self.name}:{self.option}"


@dataclass(frozen=True)
class ModelConfig:
    source: Literal["pypi-checkpoint", "onnx-file"]
    num_classes: int
    architecture: Literal["mobilenetv2", "efficientnet-lite0", "none"] = "none"
    package: str = ""
    version: str = ""
    wheel_sha256: str = ""
    checkpoint: str = ""
    path: str = ""
    url: str = ""
    sha256: str = ""
    input_name: str = "input"
    output_name: str = "logits"
    label_offset: int = 0


@dataclass(frozen=True)
class PreprocessConfig:
    color: Literal["rgb", "bgr"] = "rgb"
    resize_shorter: int = 256
    # OpenCV's bilinear (no antialiasing), area or bicubic; pillow-bilinear: Pillow's antialiased bilinear, as
    # torchvision's Resize (MobileNetV2's reference top-1 needs it: 83.9 % on the samples against 83.4 % with OpenCV's).
    interpolation: Literal["bilinear", "area", "bicubic", "pillow-bilinear"] = "bilinear"
    crop: int = 224
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetConfig:
    images: str = "data/imagenet-samples"
    val_map: str = ""  # empty: derive labels from <wnid>_<name> file names
    calibration_list: str = ""  # empty: the images at even positions of the sorted file list
    allow_truncated_images: bool = False  # a JPEG or PNG cut short is corrupt unless this says otherwise


@dataclass(frozen=True)
class CalibrationConfig:
    techniques: tuple[TechniqueStep, ...] = (TechniqueStep("fold_bn"), TechniqueStep("profile"))
    weights: WeightGranularity = "per-channel"
    range: RangeMethod = "mean_minmax"
    percentile: float = 99.99
    histogram_bins: int = 2048
    batch_size: int = 4  # profiling holds two batches of every activation: 4 keeps calibration under 1 GiB

    @property
    def per_channel(self) -> bool:
        return self.weights == "per-channel"


@dataclass(frozen=True)
class AccuracyConfig:
    target_ratio: float = 0.99


Backend = Literal["onnxruntime", "qnn-htp"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
# The values onnxruntime-qnn 2.7.0 accepts on the HTP emulator. QNN silently ignores unknown keys and only warns on
# bad values, so the schema checks them. 0 keeps QNN's own default.
HtpArch = Literal[0, 68, 69, 73, 75, 79, 81]
HtpPerformanceMode = Literal["default", "burst", "sustained_high_performance", "high_performance", "balanced",
                             "power_saver"]


@dataclass(frozen=True)
class QnnConfig:
    """The QNN HTP backend (``harness.backend: qnn-htp``): Qualcomm's onnxruntime-qnn plugin, never with CPU
    fallback. On x86 its HTP backend is an emulator: its results carry their own system name, and its latency is
    the emulator's, not a device's."""

    system: str = "qnn-htp-emulated"
    htp_arch: HtpArch = 0  # HTP architecture version (v68 ... v81)
    soc_model: int = 0  # Qualcomm SoC model number
    performance_mode: HtpPerformanceMode = "burst"
    batch: int = 1  # the static batch of model.int8.qnn.onnx; larger batches run as several calls


@dataclass(frozen=True)
class HarnessConfig:
    """How the LoadGen harness runs the model: system name, ONNX Runtime session and batching per scenario."""

    system: str = "cpu-onnxruntime"
    backend: Backend = "onnxruntime"
    qnn: QnnConfig = field(default_factory=QnnConfig)
    mlperf_model: str = "resnet50"  # the benchmark name whose mlperf.conf entries apply
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per core)
    inter_op_threads: int = 1
    workers: int = 1  # inference threads in the SUT
    offline_batch_size: int = 32
    server_batch_size: int = 4
    server_batch_timeout_ms: float = 1.0
    server_load_factor: float = 0.5  # Server target QPS as a share of the measured batch-1 throughput
    performance_sample_count: int = 1024  # capped by the dataset size


@dataclass(frozen=True)
class WorkloadConfig:
    name: str
    model: ModelConfig
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    description: str = ""
    source_path: str = ""


def parse_technique(entry: Any, where: str) -> TechniqueStep:
    """A step is ``name``, ``name:option`` or a one-key mapping ``{name: option}``."""
    if isinstance(entry, dict) and len(entry) == 1:
        name, option = next(iter(entry.items()))
    elif isinstance(entry, str):
        name, _, option = entry.partition(":")
        option = option or None
    else:
        raise WorkloadError(f"{where}: a technique must be a name or a one-key mapping, got {entry!r}")
    name = str(name).strip()
    option = None if option is None else str(option).strip()
    if not name:
        raise WorkloadError(f"{where}: a technique needs a name, got {entry!r}")
    return TechniqueStep(name, option, where)


def _check(config: WorkloadConfig, where: str) -> None:
    check_name(config.name, f"{where}: name")  # build/<name>/ and results/<system>/<name>/ are folders
    check_name(config.harness.system, f"{where}: harness.system")
    cal = config.calibration
    if cal.batch_size < 1:
        raise WorkloadError(f"{where}: calibration.batch_size must be at least 1")
    if cal.histogram_bins < 256:
        raise WorkloadError(f"{where}: calibration.histogram_bins must be at least 256")
    if not 50.0 < cal.percentile <= 100.0:
        raise WorkloadError(f"{where}: calibration.percentile must lie in (50, 100]")
    _check_harness(config.harness, where)
    if config.model.num_classes < 2:
        raise WorkloadError(f"{where}: model.num_classes must be at least 2")
    if config.model.source == "pypi-checkpoint" and not all(
        (config.model.package, config.model.version, config.model.wheel_sha256, config.model.checkpoint)
    ):
        raise WorkloadError(f"{where}: a pypi-checkpoint model needs package, version, wheel_sha256, checkpoint")
    if config.model.source == "onnx-file" and not config.model.path:
        raise WorkloadError(f"{where}: an onnx-file model needs a path")
    if any(s <= 0 for s in config.preprocessing.std) or config.preprocessing.crop > config.preprocessing.resize_shorter:
        raise WorkloadError(f"{where}: preprocessing needs positive std and crop <= resize_shorter")


def _check_harness(h: HarnessConfig, where: str) -> None:
    for key in ("offline_batch_size", "server_batch_size", "workers", "performance_sample_count"):
        if getattr(h, key) < 1:
            raise WorkloadError(f"{where}: harness.{key} must be at least 1, got {getattr(h, key)}")
    if h.intra_op_threads < 0 or h.inter_op_threads < 0:
        raise WorkloadError(f"{where}: harness thread counts must be 0 (default) or positive")
    if not h.providers:
        raise WorkloadError(f"{where}: harness.providers must name at least one execution provider")
    if h.qnn.batch < 1 or h.qnn.soc_model < 0 or not h.qnn.system:
        raise WorkloadError(f"{where}: harness.qnn needs batch >= 1, soc_model >= 0 and a system name")
    if h.server_batch_timeout_ms < 0 or not 0 < h.server_load_factor <= 1:
        raise WorkloadError(f"{where}: harness needs server_batch_timeout_ms >= 0 and 0 < server_load_factor <= 1")


def workload_from_dict(data: Any, where: str) -> WorkloadConfig:
    config = bind(WorkloadConfig, data, where)
    _check(config, where)
    return dataclasses.replace(config, source_path=where)


def load_workload(path: Path) -> WorkloadConfig:
    """Read and validate a workload YAML (``safe_load`` only)."""
    return workload_from_dict(read_yaml(path), str(path))


def with_overrides(config: WorkloadConfig, weights: str | None = None, range_method: str | None = None,
                   techniques: str | None = None, backend: str | None = None) -> WorkloadConfig:
    """Apply the command line's WEIGHTS=, RANGE=, TECHNIQUES= and BACKEND= on top of the YAML."""
    if backend:
        harness = dataclasses.replace(config.harness, backend=bind_value(backend, Backend, "BACKEND"))
        config = dataclasses.replace(config, harness=harness)
    cal = config.calibration
    changes: dict[str, Any] = {}
    if weights:
        changes["weights"] = bind_value(weights, WeightGranularity, "WEIGHTS")
    if range_method:
        changes["range"] = bind_value(range_method, RangeMethod, "RANGE")
    if techniques:
        items = [t for t in techniques.split(",") if t.strip()]
        if not items:
            raise WorkloadError("TECHNIQUES: empty list")
        changes["techniques"] = tuple(parse_technique(t, "TECHNIQUES") for t in items)
    return dataclasses.replace(config, calibration=dataclasses.replace(cal, **changes)) if changes else config
