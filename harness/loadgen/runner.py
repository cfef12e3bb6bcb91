"""One scenario and mode end to end: an isolated LoadGen run, its accuracy, and the results tree.

``results/<system>/<workload>/<Scenario>/accuracy/`` and ``.../performance/run_1/`` are first written in a
hidden staging directory beside them and renamed into place only when complete, so an interrupted run never
leaves a result that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harness.loadgen.accuracy import compare, read_predictions, score
from harness.loadgen.backend import Backend
from harness.loadgen.isolated import RunRequest, run_isolated
from harness.loadgen.scenarios import DurationProfile, parse_mode, parse_scenario
from workload.config import HarnessConfig
from workload.errors import HarnessError
from workload.files import write_json
from workload.paths import check_name, inside

log = logging.getLogger(__name__)

LATENCY_KEYS = {"p50_ms": "result_50.00_percentile_latency_ns", "p90_ms": "result_90.00_percentile_latency_ns",
                "p99_ms": "result_99.00_percentile_latency_ns"}


@dataclass(frozen=True)
class RunSpec:
    """Everything one LoadGen run needs, resolved by the caller (no paths or environment read here)."""

    workload: str  # the results folder name
    scenario: str
    mode: str
    profile: DurationProfile
    harness: HarnessConfig
    tensors_path: Path
    labels: np.ndarray
    label_offset: int
    backend_factory: Callable[[], Backend]
    results_root: Path
    model: str = ""  # what ran, for summary.json
    reference_top1: float | None = None  # the float model's top-1
    calibration_top1: float | None = None  # the int8 top-1 the calibrate command printed
    target_ratio: float = 0.99
    sample_count: int | None = None  # the first N samples only (the HTP emulator's smoke runs); None: all
    note: str = ""  # what the figures are, when not a device's (the HTP emulator)


def result_dir(results_root: Path, system: str, workload: str, scenario: str, mode: str) -> Path:
    base = results_root / check_name(system, "system name") / check_name(workload, "workload name") / scenario
    return inside(results_root, base / "accuracy" if mode == "accuracy" else base / "performance" / "run_1")


def read_detail_log(path: Path) -> dict[str, Any]:
    """The ``:::MLLOG`` entries of LoadGen's detail log as ``key -> value`` (the last one wins)."""
    entries: dict[str, Any] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(":::MLLOG "):
            record = json.loads(line[len(":::MLLOG "):])
            entries[record["key"]] = record.get("value")
    return entries


# LoadGen's early-stopping latency estimate (ns), the stream scenarios' official metric; the key's suffix
# names the scenario (ss: SingleStream p90, ms: MultiStream p99), not a unit.
EARLY_STOPPING_KEYS = {"SingleStream": "early_stopping_latency_ss", "MultiStream": "early_stopping_latency_ms"}


def performance_figures(detail: dict[str, Any], scenario: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"validity": detail.get("result_validity", "UNKNOWN")}
    for key in ("result_samples_per_second", "result_completed_samples_per_sec"):
        if key in detail:
            figures["samples_per_s"] = float(detail[key])
            break
    if "result_qps_with_loadgen_overhead" in detail:
        figures["queries_per_s"] = float(detail["result_qps_with_loadgen_overhead"])
    if EARLY_STOPPING_KEYS.get(scenario) in detail:
        figures["early_stopping_latency_ms"] = float(detail[EARLY_STOPPING_KEYS[scenario]]) / 1e6
    for name, key in LATENCY_KEYS.items():
        if key in detail:
            figures[name] = float(detail[key]) / 1e6
    figures["early_stopping_met"] = detail.get("early_stopping_met")
    figures["min_duration_met"] = detail.get("result_min_duration_met")
    figures["min_queries_met"] = detail.get("result_min_queries_met")
    return figures


def publish(staging: Path, final: Path) -> None:
    """Rename the finished staging directory into place, replacing an older result."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old)
    else:
        staging.rename(final)


def remove_abandoned_staging(parent: Path) -> None:
    """Staging directories left by a killed run (``.partial-<name>-<pid>-*`` whose process is gone)."""
    for path in parent.glob(".partial-*"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True)


def run_scenario(spec: RunSpec) -> dict[str, Any]:
    """Run one scenario in one mode; return the summary written to ``summary.json``."""
    scenario = parse_scenario(spec.scenario)
    (mode,) = parse_mode(spec.mode)
    final = result_dir(spec.results_root, spec.harness.system, spec.workload, scenario, mode)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(final.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{final.name.replace('-', '_')}-{os.getpid()}-",
                                    dir=final.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would make the published result private
    try:
        request = RunRequest(scenario, mode, spec.profile, spec.harness, spec.tensors_path, spec.label_offset,
                             spec.backend_factory, staging,
                             f"generated for {spec.workload} {scenario} {mode}, profile {spec.profile.name}",
                             spec.sample_count)
        labels = spec.labels if spec.sample_count is None else spec.labels[:spec.sample_count]
        outcome = run_isolated(request)
        detail = read_detail_log(staging / "mlperf_log_detail.txt")
        summary: dict[str, Any] = {
            "system": spec.harness.system, "workload": spec.workload, "scenario": scenario, "mode": mode,
            "profile": spec.profile.name, "model": spec.model, "loadgen_version": detail.get("loadgen_version"),
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "performance_sample_count": outcome.performance_count, "batches_run": outcome.batches_run,
            "measurement": asdict(outcome.measurement),
            "harness": asdict(spec.harness), "loadgen_errors": detail.get("num_errors", 0),
            "samples": len(labels),
        }
        if spec.note:
            summary["note"] = spec.note
        if mode == "performance":
            summary["performance"] = performance_figures(detail, scenario)
        else:
            log_path = staging / "mlperf_log_accuracy.json"
            result = score(read_predictions(log_path), labels, log_path)
            if result.total != len(labels):
                raise HarnessError(f"{log_path}: answers {result.total} of the {len(labels)} samples")
            (staging / "accuracy.txt").write_text(result.mlperf_line() + "\n")
            summary["accuracy"] = compare(result, spec.reference_top1, spec.target_ratio)
            summary["accuracy"]["mlperf_line"] = result.mlperf_line()
            summary["accuracy"]["calibration_int8_top1"] = spec.calibration_top1
        write_json(staging / "summary.json", summary)
        publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%s %s %s -> %s", spec.workload, scenario, mode, final)
    return summary
