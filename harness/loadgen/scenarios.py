"""LoadGen settings per scenario: batching policy, duration profiles and the generated ``user.conf``.

LoadGen's built-in ``mlperf.conf`` (the MLPerf Inference v6.0 rules shipped in mlcommons-loadgen 6.0.17) is
loaded first, then the generated ``user.conf`` on top, each exactly once per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlperf_loadgen as lg

from harness.loadgen.sut import BatchPolicy
from workload.config import HarnessConfig
from workload.errors import HarnessError, WorkloadError

SCENARIOS = {
    "Offline": lg.TestScenario.Offline,
    "Server": lg.TestScenario.Server,
    "SingleStream": lg.TestScenario.SingleStream,
    "MultiStream": lg.TestScenario.MultiStream,
}
MODES = {"accuracy": lg.TestMode.AccuracyOnly, "performance": lg.TestMode.PerformanceOnly}
MULTISTREAM_SAMPLES_PER_QUERY = 8  # mlperf.conf's *.MultiStream.samples_per_query

# Safety margins on measured speed so that LoadGen plans a run at least as long as the minimum duration:
# Offline over-estimates throughput, the latency scenarios under-estimate latency.
OFFLINE_QPS_MARGIN = 1.3
LATENCY_MARGIN = 0.8


@dataclass(frozen=True)
class DurationProfile:
    """Minimum duration and query count put into user.conf; ``None`` keeps mlperf.conf's official value."""

    name: str
    min_duration_ms: int | None
    min_query_count: dict[str, int] | None


PROFILES = {
    # Early stopping needs ~460 queries all under the bound for a p99 (Server) and 662 for MultiStream's p99.
    "smoke": DurationProfile("smoke", 4000, {"Offline": 1, "Server": 1024, "SingleStream": 256, "MultiStream": 662}),
    "submission": DurationProfile("submission", None, None),
}
# The smoke profile on the QNN HTP x86 emulator (about 1 s an image): 64 SingleStream queries, the fewest for
# which LoadGen's early stopping can bound the p90. Its name goes into every summary, so it is never mistaken for
# the smoke profile.
EMULATOR_SMOKE = DurationProfile("smoke-emulator", 4000, {"Offline": 1, "Server": 64, "SingleStream": 64,
                                                          "MultiStream": 64})


@dataclass(frozen=True)
class Measurement:
    """Speed measured on the loaded model just before the real run."""

    single_latency_ms: float | None = None  # median batch-1 latency (SingleStream, Server)
    multistream_latency_ms: float | None = None  # median latency of one MultiStream query
    offline_qps: float | None = None  # samples/s at the Offline batch size


def parse_scenario(name: str) -> str:
    if name not in SCENARIOS:
        raise WorkloadError(f"unknown scenario '{name}' (known: {', '.join(SCENARIOS)})")
    return name


def parse_mode(name: str) -> list[str]:
    if name == "both":
        return ["accuracy", "performance"]
    if name not in MODES:
        raise WorkloadError(f"unknown mode '{name}' (known: accuracy, performance, both)")
    return [name]


def parse_profile(name: str) -> DurationProfile:
    if name not in PROFILES:
        raise WorkloadError(f"unknown profile '{name}' (known: {', '.join(PROFILES)})")
    return PROFILES[name]


def batch_policy(scenario: str, cfg: HarnessConfig) -> BatchPolicy:
    if scenario == "Offline":
        return BatchPolicy(split=cfg.offline_batch_size, max_batch=cfg.offline_batch_size)
    if scenario == "Server":
        return BatchPolicy(split=1, max_batch=cfg.server_batch_size, coalesce_ms=cfg.server_batch_timeout_ms)
    if scenario == "MultiStream":
        return BatchPolicy(split=MULTISTREAM_SAMPLES_PER_QUERY, max_batch=MULTISTREAM_SAMPLES_PER_QUERY)
    return BatchPolicy(split=1, max_batch=1)


def user_conf(scenario: str, cfg: HarnessConfig, profile: DurationProfile, performance_count: int,
              measured: Measurement, header: str) -> str:
    """The ``user.conf`` text: sample count, profile durations and the measured expected speed."""
    key = f"{cfg.mlperf_model}.{scenario}"
    lines = [f"# {header}", f"{cfg.mlperf_model}.*.performance_sample_count_override = {performance_count}"]
    if profile.min_duration_ms is not None:
        lines.append(f"{key}.min_duration = {profile.min_duration_ms}")
    if profile.min_query_count is not None:
        lines.append(f"{key}.min_query_count = {profile.min_query_count[scenario]}")
    if measured.offline_qps is not None:
        lines.append(f"{key}.target_qps = {measured.offline_qps * OFFLINE_QPS_MARGIN:.3f}")
    if measured.multistream_latency_ms is not None:
        lines.append(f"{key}.target_latency = {measured.multistream_latency_ms * LATENCY_MARGIN:.4f}")
    if measured.single_latency_ms is not None:
        if scenario == "Server":
            lines.append(f"{key}.target_qps = {cfg.server_load_factor * 1000.0 / measured.single_latency_ms:.3f}")
        else:
            lines.append(f"{key}.target_latency = {measured.single_latency_ms * LATENCY_MARGIN:.4f}")
    return "\n".join(lines) + "\n"


def loadgen_settings(scenario: str, mode: str, cfg: HarnessConfig, user_conf_path: Path) -> lg.TestSettings:
    """mlperf.conf (built in), then ``user_conf_path``, each loaded once into fresh settings."""
    settings = lg.TestSettings()
    settings.scenario = SCENARIOS[scenario]
    settings.mode = MODES[mode]
    # conf_type 0 loads the built-in mlperf.conf explicitly: LoadGen otherwise loads it only on the first
    # FromConfig call of a process, so a second run in the same process would silently lose it.
    if settings.FromConfig("", cfg.mlperf_model, scenario, 0) != 0:
        raise HarnessError(f"LoadGen could not apply its built-in mlperf.conf for model '{cfg.mlperf_model}'")
    if settings.FromConfig(str(user_conf_path), cfg.mlperf_model, scenario, 1) != 0:
        raise HarnessError(f"{user_conf_path}: LoadGen rejected the generated user.conf")
    return settings
