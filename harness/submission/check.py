"""``make check-submission``: validate a submission tree against the v6.0 rules, one line per problem.

A problem either is a defect (``cause`` empty) or is caused by design by this machine's setup: the smoke
profile's short durations, the 1000-image sample dataset, or a model that is not the benchmark's reference.
Either way the scenario is not submittable; the cause says why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.loadgen.runner import read_detail_log
from harness.submission.rules import (
    ACCURACY_FILES,
    ACCURACY_LOG_VIEWABLE_BYTES,
    BENCHMARKS,
    EARLY_STOPPING_SCENARIOS,
    LOADGEN_VERSION,
    MAX_ACCURACY_LOG_BYTES,
    MEASUREMENTS_FIELDS,
    MIN_DURATION_MS,
    PERFORMANCE_FILES,
    SCENARIO_FILES,
    SEEDS,
    SYSTEM_MEANINGFUL_FIELDS,
    SYSTEM_REQUIRED_FIELDS,
    VALID_DIVISIONS,
    BenchmarkRules,
)
from workload.files import sha256_of

SMOKE = "smoke profile"
SAMPLES = "sample dataset"
MODEL = "not the reference model"
ACCURACY_LINE = re.compile(r"^accuracy=([\d.]+)%")
HASH_LINE = re.compile(r"^hash=([0-9a-f]{64})$")
REQUIRED_SCENARIOS = {"edge": ("Offline", "SingleStream", "MultiStream"), "datacenter": ("Offline", "Server")}


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the checked root
    message: str
    cause: str = ""  # empty: a defect; otherwise the by-design reason

    def line(self) -> str:
        return f"{self.path}: {self.message}" + (f" [by design: {self.cause}]" if self.cause else "")


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    scenarios: list[str] = field(default_factory=list)  # scenario dirs checked, relative to root

    def verdicts(self) -> dict[str, list[Problem]]:
        return {s: [p for p in self.problems if p.path.startswith(s + "/") or p.path == s] for s in self.scenarios}


def truncated_text(text: str) -> str:
    """What truncate_accuracy_log.py leaves of a log: 4096 characters from each end around an ellipsis."""
    return text[:ACCURACY_LOG_VIEWABLE_BYTES] + "\n\n...\n\n" + text[-ACCURACY_LOG_VIEWABLE_BYTES:]


def expected_in_tree(text: str) -> str:
    """The accuracy log as the tree must hold it: truncated when it is large, unchanged otherwise."""
    return truncated_text(text) if len(text.encode()) >= MAX_ACCURACY_LOG_BYTES else text


class Checker:
    def __init__(self, root: Path, backup_root: Path) -> None:
        self.root = root
        self.backup_root = backup_root
        self.report = Report()

    def add(self, path: Path, message: str, cause: str = "") -> None:
        self.report.problems.append(Problem(str(path.relative_to(self.root)), message, cause))

    def read_json(self, path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            self.add(path, "missing")
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            self.add(path, f"not valid JSON ({err.msg} at line {err.lineno})")
            return None
        if not isinstance(data, dict):
            self.add(path, "must hold a JSON object")
            return None
        return data

    def check(self) -> Report:
        divisions = [d for d in sorted(self.root.iterdir()) if d.is_dir() and d.name in VALID_DIVISIONS] \
            if self.root.is_dir() else []
        if not divisions:
            self.add(self.root, "no closed/ or open/ division folder: run `make submission` first") \
                if self.root.is_dir() else self.report.problems.append(
                    Problem(str(self.root), "missing: run `make submission` first"))
        for division in divisions:
            for org in sorted(p for p in division.iterdir() if p.is_dir()):
                self.check_org(org, division.name)
        return self.report

    def check_org(self, org: Path, division: str) -> None:
        calibration = org / "documentation" / "calibration.md"
        if not calibration.is_file() or not calibration.read_text().strip():
            self.add(calibration, "missing or empty")
        if not any((org / "src").rglob("*.py")):
            self.add(org / "src", "missing: the code that produced the results must be included")
        results = org / "results"
        systems = sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
        if not systems:
            self.add(results, "no system folders")
        for system in systems:
            description = self.check_system(org / "systems" / f"{system.name}.json", org.name, division)
            system_type = (description or {}).get("system_type", "edge")
            for benchmark in sorted(p for p in system.iterdir() if p.is_dir()):
                self.check_benchmark(benchmark, system_type)

    def check_system(self, path: Path, org: str, division: str) -> dict[str, Any] | None:
        data = self.read_json(path)
        if data is None:
            return None
        for key in SYSTEM_REQUIRED_FIELDS:
            if key not in data:
                self.add(path, f"field '{key}' is missing")
            elif key in SYSTEM_MEANINGFUL_FIELDS and not data[key]:
                self.add(path, f"field '{key}' needs a meaningful (non-empty, non-zero) value")
        if data.get("submitter") != org:
            self.add(path, f"submitter '{data.get('submitter')}' differs from the folder name '{org}'")
        if data.get("division") != division:
            self.add(path, f"division '{data.get('division')}' differs from the folder '{division}'")
        return data

    def check_benchmark(self, benchmark: Path, system_type: str) -> None:
        rules = next((r for r in BENCHMARKS.values() if r.name == benchmark.name), None)
        if rules is None:
            self.add(benchmark, f"unknown benchmark (known: {', '.join(r.name for r in BENCHMARKS.values())})")
            return
        present = {p.name for p in benchmark.iterdir() if p.is_dir()}
        required = {s for t in system_type.split(",") for s in REQUIRED_SCENARIOS.get(t.strip(), ())}
        for scenario in sorted(required - present):
            self.add(benchmark, f"required {system_type} scenario {scenario} is missing")
        for scenario in sorted(present):
            self.check_scenario(benchmark / scenario, rules)

    def check_scenario(self, path: Path, rules: BenchmarkRules) -> None:
        self.report.scenarios.append(str(path.relative_to(self.root)))
        for name in SCENARIO_FILES:
            if not (path / name).is_file():
                self.add(path / name, "missing")
        conf = path / "user.conf"
        smoke = SMOKE if conf.is_file() and "profile smoke" in conf.read_text().splitlines()[0] else ""
        measurements = self.read_json(path / "measurements.json") if (path / "measurements.json").is_file() else None
        for key in MEASUREMENTS_FIELDS:
            if measurements is not None and not str(measurements.get(key, "")).strip():
                self.add(path / "measurements.json", f"field '{key}' is missing or empty")
        self.check_performance(path / "performance" / "run_1", path.name, rules, smoke)
        self.check_accuracy(path / "accuracy", rules, measurements or {})
        for test in rules.compliance_tests:
            self.check_compliance(path / test, test, path.name, rules, smoke)

    def check_performance(self, run: Path, scenario: str, rules: BenchmarkRules, smoke: str) -> None:
        for name in PERFORMANCE_FILES:
            if not (run / name).is_file():
                self.add(run / name, "missing")
        if not (run / "mlperf_log_detail.txt").is_file():
            return
        detail_path = run / "mlperf_log_detail.txt"
        d = read_detail_log(detail_path)
        if d.get("effective_scenario") != scenario:
            self.add(detail_path, f"ran scenario {d.get('effective_scenario')}, but sits in the {scenario} folder")
        if not str(d.get("loadgen_version", "")).startswith(LOADGEN_VERSION + " "):
            self.add(detail_path, f"LoadGen version {d.get('loadgen_version')!r}, the round needs {LOADGEN_VERSION}")
        for name, expected in SEEDS.items():
            if d.get(f"effective_{name}") != expected:
                self.add(detail_path, f"{name} is {d.get(f'effective_{name}')}, the rules fix it to {expected}")
        if d.get("num_errors", 0) != 0:
            self.add(detail_path, f"LoadGen reported {d.get('num_errors')} errors")
        if d.get("result_validity") != "VALID":
            self.add(detail_path, f"result is {d.get('result_validity', 'missing')}, not VALID", smoke)
        count = d.get("effective_performance_sample_count", 0)
        if count < rules.performance_sample_count:
            short = d.get("qsl_reported_total_count", 0) < rules.performance_sample_count
            self.add(detail_path, f"performance_sample_count {count} < {rules.performance_sample_count}",
                     SAMPLES if short else "")
        duration = d.get("effective_min_duration_ms", 0)
        if duration < MIN_DURATION_MS:
            self.add(detail_path, f"min_duration {duration} ms < {MIN_DURATION_MS} ms", smoke)
        if scenario in EARLY_STOPPING_SCENARIOS:
            if d.get("early_stopping_met") is not True:
                self.add(detail_path, "early stopping condition not met", smoke)
        elif d.get("effective_min_query_count", 0) < rules.min_queries.get(scenario, 1):
            self.add(detail_path, f"min_query_count {d.get('effective_min_query_count')} < "
                     f"{rules.min_queries[scenario]}", smoke)
        if scenario == "Offline" and d.get("effective_samples_per_query", 0) < rules.offline_min_samples_per_query:
            self.add(detail_path, f"Offline samples_per_query {d.get('effective_samples_per_query')} < "
                     f"{rules.offline_min_samples_per_query}", smoke)
        if scenario == "Server" and d.get("effective_target_latency_ns", 0) > rules.server_latency_ns:
            self.add(detail_path, f"target latency {d.get('effective_target_latency_ns')} ns > "
                     f"{rules.server_latency_ns} ns")

    def check_accuracy(self, run: Path, rules: BenchmarkRules, measurements: dict[str, Any]) -> None:
        missing = [name for name in ACCURACY_FILES if not (run / name).is_file()]
        for name in missing:
            self.add(run / name, "missing")
        if missing:
            return
        detail = read_detail_log(run / "mlperf_log_detail.txt")
        if detail.get("num_errors", 0) != 0:
            self.add(run / "mlperf_log_detail.txt", f"LoadGen reported {detail.get('num_errors')} errors")
        total = detail.get("qsl_reported_total_count")
        if total != rules.dataset_size:
            self.add(run / "mlperf_log_detail.txt", f"accuracy run covers {total} samples, the benchmark's "
                     f"dataset has {rules.dataset_size}", SAMPLES)
        lines = [line.strip() for line in (run / "accuracy.txt").read_text().splitlines() if line.strip()]
        top1 = next((float(m.group(1)) for m in map(ACCURACY_LINE.match, lines) if m), None)
        if top1 is None:
            self.add(run / "accuracy.txt", "no 'accuracy=XX.XXX%' line")
        self.check_hash(run, lines)
        if top1 is not None:
            self.check_accuracy_targets(run / "accuracy.txt", top1, rules, measurements,
                                        SAMPLES if total != rules.dataset_size else "")

    def check_hash(self, run: Path, lines: list[str]) -> None:
        log_path = run / "mlperf_log_accuracy.json"
        match = HASH_LINE.match(lines[-1]) if lines else None
        if match is None:
            self.add(run / "accuracy.txt", "does not end with the hash=<sha256> line of the accuracy log")
            return
        backup = self.backup_root / log_path.relative_to(self.root)
        size = log_path.stat().st_size
        if size > MAX_ACCURACY_LOG_BYTES:
            self.add(log_path, f"not truncated ({size} bytes > {MAX_ACCURACY_LOG_BYTES})")
        full = backup if backup.is_file() else log_path
        if full is log_path and size >= MAX_ACCURACY_LOG_BYTES:
            self.add(backup, "missing: the full accuracy log must be kept in the backup folder")
            return
        if sha256_of(full) != match.group(1):
            self.add(run / "accuracy.txt", f"hash does not match {full.name} "
                     f"({'backup' if full is backup else 'in the tree'})")
        elif full is backup and log_path.read_text() != expected_in_tree(backup.read_text()):
            self.add(log_path, "is not the truncation of the backed-up full log")

    def check_accuracy_targets(self, path: Path, top1: float, rules: BenchmarkRules,
                               measurements: dict[str, Any], dataset_cause: str) -> None:
        target = measurements.get("accuracy_target", {})
        threshold = target.get("threshold_top1_percent") if isinstance(target, dict) else None
        if threshold is None:
            self.add(path.parent.parent / "measurements.json", "no accuracy_target.threshold_top1_percent")
        elif top1 < threshold:
            self.add(path, f"top-1 {top1:.3f}% is below the workload target {threshold:.3f}% "
                     f"({target.get('target_ratio')} x float top-1 {target.get('float_top1_percent')}%)")
        weights = str(measurements.get("starting_weights_filename", ""))
        if weights != rules.reference_weights:
            self.add(path.parent.parent / "measurements.json", f"closed division needs the reference weights "
                     f"{rules.reference_weights}; this result started from {weights or 'nothing'}", MODEL)
        elif top1 < rules.closed_top1_target:
            self.add(path, f"top-1 {top1:.3f}% is below the closed target {rules.closed_top1_target:.3f}%",
                     dataset_cause)

    def check_compliance(self, test_dir: Path, test: str, scenario: str, rules: BenchmarkRules,
                         smoke: str) -> None:
        if not test_dir.is_dir():
            self.add(test_dir, f"missing: compliance test {test} was not run")
            return
        verdicts = ["verify_performance.txt"] + (["verify_accuracy.txt"] if test == "TEST01" else [])
        for name in verdicts:
            path = test_dir / name
            if not path.is_file():
                self.add(path, "missing")
            elif "TEST PASS" not in path.read_text().splitlines():
                self.add(path, f"{test} failed: {path.read_text().strip().splitlines()[-1]}",
                         smoke if name == "verify_performance.txt" else "")
        if test == "TEST01" and not (test_dir / "accuracy" / "mlperf_log_accuracy.json").is_file():
            self.add(test_dir / "accuracy" / "mlperf_log_accuracy.json", "missing")
        self.check_performance(test_dir / "performance" / "run_1", scenario, rules, smoke)


def check_submission(root: Path, backup_root: Path) -> Report:
    return Checker(root, backup_root).check()


def format_report(report: Report) -> list[str]:
    lines = [p.line() for p in report.problems]
    for scenario, problems in report.verdicts().items():
        if not problems:
            lines.append(f"{scenario}: SUBMITTABLE")
            continue
        causes = sorted({p.cause or "defects" for p in problems})
        lines.append(f"{scenario}: NOT SUBMITTABLE ({len(problems)} problems: {', '.join(causes)})")
    return lines
