"""The MLPerf Inference v6.0 rules this harness packages for, as the official submission checker encodes them.

The round is the one whose ``mlperf.conf`` ships inside mlcommons-loadgen 6.0.17 (pinned in pyproject.toml):
its seeds, minimum durations and query counts are the ones below. Only the ImageNet classification benchmark
(``resnet``, LoadGen model name ``resnet50``) is described, since it is the only one this harness runs.
"""

from __future__ import annotations

from dataclasses import dataclass

ROUND = "v6.0"
LOADGEN_VERSION = "6.0.17"
SEEDS = {  # mlperf.conf's *.*.<name>, logged by LoadGen as effective_<name>
    "qsl_rng_seed": 2085463073848966840,
    "sample_index_rng_seed": 2747215439041700203,
    "schedule_rng_seed": 16159082839903944936,
}
MIN_DURATION_MS = 600_000
SCENARIOS = ("Offline", "Server", "SingleStream", "MultiStream")
EARLY_STOPPING_SCENARIOS = ("Server", "SingleStream", "MultiStream")
VALID_STATUSES = ("available", "preview", "rdi")
VALID_SYSTEM_TYPES = ("datacenter", "edge", "datacenter,edge", "edge,datacenter")
VALID_DIVISIONS = ("closed", "open")
MAX_ACCURACY_LOG_BYTES = 10 * 1024  # truncate_accuracy_log.py truncates logs at least this large
ACCURACY_LOG_VIEWABLE_BYTES = 4096  # ...to this many characters from the start and from the end

SYSTEM_REQUIRED_FIELDS = (
    "division", "submitter", "status", "system_name", "number_of_nodes", "host_processor_model_name",
    "host_processors_per_node", "host_processor_core_count", "host_memory_capacity", "host_storage_capacity",
    "host_storage_type", "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
    "framework", "operating_system", "system_type", "other_software_stack", "host_processor_frequency",
    "host_processor_caches", "host_memory_configuration", "host_processor_interconnect", "host_networking",
    "host_networking_topology", "accelerator_frequency", "accelerator_host_interconnect",
    "accelerator_interconnect", "accelerator_interconnect_topology", "accelerator_memory_configuration",
    "accelerator_on-chip_memories", "cooling", "hw_notes", "sw_notes", "host_network_card_count",
    "system_type_detail",
)
SYSTEM_MEANINGFUL_FIELDS = (  # must also be non-empty (falsy values, 0 included, are rejected)
    "division", "submitter", "system_type", "status", "system_name", "number_of_nodes",
    "host_processor_model_name", "host_processors_per_node", "host_processor_core_count", "host_memory_capacity",
    "host_memory_configuration", "host_storage_capacity", "host_storage_type", "host_networking",
    "host_network_card_count", "host_networking_topology", "accelerators_per_node", "accelerator_model_name",
    "accelerator_memory_capacity", "accelerator_host_interconnect", "accelerator_memory_configuration",
    "accelerator_interconnect", "cooling", "framework", "operating_system", "other_software_stack",
)
MEASUREMENTS_FIELDS = ("input_data_types", "retraining", "starting_weights_filename", "weight_data_types",
                       "weight_transformations")
PERFORMANCE_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
ACCURACY_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "accuracy.txt", "mlperf_log_accuracy.json")
SCENARIO_FILES = ("user.conf", "README.md", "measurements.json")


@dataclass(frozen=True)
class BenchmarkRules:
    """One benchmark's closed-division requirements."""

    name: str  # the results folder name
    loadgen_model: str  # the model name in mlperf.conf
    reference_weights: str  # the file a closed submission must start from
    reference_top1: float  # the FP32 reference accuracy (%), on the full validation set
    accuracy_ratio: float
    dataset_size: int
    performance_sample_count: int
    min_queries: dict[str, int]  # for scenarios without early stopping, and Offline's samples per query
    offline_min_samples_per_query: int
    server_latency_ns: int
    compliance_tests: tuple[str, ...]

    @property
    def closed_top1_target(self) -> float:
        return self.reference_top1 * self.accuracy_ratio


RESNET = BenchmarkRules(
    name="resnet", loadgen_model="resnet50", reference_weights="resnet50_v1.onnx", reference_top1=76.46,
    accuracy_ratio=0.99, dataset_size=50_000, performance_sample_count=1024,
    min_queries={"SingleStream": 1024, "MultiStream": 270336, "Server": 270336, "Offline": 1},
    offline_min_samples_per_query=24576, server_latency_ns=15_000_000, compliance_tests=("TEST01", "TEST04"),
)
BENCHMARKS = {RESNET.loadgen_model: RESNET}
