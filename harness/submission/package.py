"""``make submission``: the MLPerf v6.0 submission tree for one workload, built in a staging folder and renamed.

Layout (under ``results/submission/``)::

    <division>/<org>/systems/<system>.json
    <division>/<org>/documentation/calibration.md
    <division>/<org>/src/...                        snapshot of the code that produced the results
    <division>/<org>/results/<system>/<benchmark>/<Scenario>/
        README.md  user.conf  measurements.json
        performance/run_1/mlperf_log_{summary,detail}.txt
        accuracy/{accuracy.txt, mlperf_log_accuracy.json (truncated), mlperf_log_{summary,detail}.txt}
        TEST01/{verify_accuracy.txt, verify_performance.txt, accuracy/, performance/run_1/}
        TEST04/{verify_performance.txt, performance/run_1/}
    accuracy-backup/<division>/<org>/results/.../accuracy/mlperf_log_accuracy.json   the full logs
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.loadgen.backend import OnnxRuntimeBackend
from harness.loadgen.isolated import RunRequest
from harness.loadgen.runner import publish, result_dir
from harness.loadgen.scenarios import parse_profile, parse_scenario
from harness.submission.calibration_doc import CalibratedWorkload, calibration_markdown, read_report
from harness.submission.check import expected_in_tree
from harness.submission.compliance import run_test, verify_accuracy, verify_performance
from harness.submission.config import SubmissionConfig, SubmissionError
from harness.submission.rules import BENCHMARKS, BenchmarkRules
from harness.submission.system_info import Machine, system_description
from harness.workflow import ensure_model, run_workload
from workload.config import WorkloadConfig
from workload.files import sha256_of
from workload.inputs import load_workload_data
from workload.paths import build_dir, inside, results_root

log = logging.getLogger(__name__)

SOURCE_PATHS = ("workload", "calibration", "harness", "workloads", "benchmarks", "tests", "Makefile", "pyproject.toml",
                "submission.yaml", "README.md")
RUN_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")


@dataclass(frozen=True)
class PackageRequest:
    config: WorkloadConfig
    root: Path  # the repository root: results/, build/ and the sources live under it
    profile: str
    scenarios: tuple[str, ...]
    submission: SubmissionConfig
    machine: Machine
    documented: tuple[WorkloadConfig, ...]  # the workloads calibration.md describes


def submission_root(root: Path) -> Path:
    return results_root(root) / "submission"


def benchmark_rules(config: WorkloadConfig) -> BenchmarkRules:
    if config.harness.mlperf_model not in BENCHMARKS:
        raise SubmissionError(f"{config.source_path}: harness.mlperf_model '{config.harness.mlperf_model}' has no "
                              f"submission rules here (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[config.harness.mlperf_model]


def _fresh(run: Path, profile: str, model: Path) -> bool:
    """A finished run of this profile, newer than the model it measured."""
    summary = run / "summary.json"
    if not summary.is_file() or not model.is_file():
        return False
    data = json.loads(summary.read_text())
    return data.get("profile") == profile and summary.stat().st_mtime >= model.stat().st_mtime


def ensure_runs(request: PackageRequest, scenario: str) -> dict[str, Path]:
    """The accuracy and performance runs of ``scenario``, running whichever is missing or stale."""
    config, root = request.config, request.root
    model = ensure_model(config, root, "int8")
    runs = {mode: result_dir(results_root(root), config.harness.system, config.name, scenario, mode)
            for mode in ("accuracy", "performance")}
    for mode, run in runs.items():
        if _fresh(run, request.profile, model):
            log.info("reusing %s", run)
        else:
            log.info("running %s %s %s (profile %s)", config.name, scenario, mode, request.profile)
            run_workload(config, root, scenario, mode, request.profile)
    return runs


def compliance_request(request: PackageRequest, scenario: str) -> RunRequest:
    config = request.config
    model = ensure_model(config, request.root, "int8")
    _, _, evaluation = load_workload_data(config, request.root, show_progress=False)
    factory = functools.partial(OnnxRuntimeBackend, model, config.harness, config.model.output_name)
    return RunRequest(scenario, "performance", parse_profile(request.profile), config.harness,
                      Path(evaluation.filename), config.model.label_offset, factory, Path(),
                      f"generated for {config.name} {scenario} performance, profile {request.profile}")


def copy_accuracy(source: Path, target: Path, backup: Path) -> None:
    """accuracy/ as truncate_accuracy_log.py leaves it: hash line appended, large logs truncated, full log kept."""
    target.mkdir(parents=True)
    for name in (*RUN_FILES, "accuracy.txt"):
        shutil.copy2(source / name, target / name)
    full = source / "mlperf_log_accuracy.json"
    with (target / "accuracy.txt").open("a") as f:
        f.write(f"hash={sha256_of(full)}\n")
    backup.mkdir(parents=True)
    shutil.copy2(full, backup / full.name)
    (target / full.name).write_text(expected_in_tree(full.read_text()))


def measurements(config: WorkloadConfig, report: dict[str, Any] | None) -> dict[str, Any]:
    weights = Path(config.model.checkpoint or config.model.path).name
    steps = [str(s) for s in (report or {}).get("calibration", {}).get("techniques", config.calibration.techniques)]
    data: dict[str, Any] = {
        "input_data_types": "fp32 (quantized to uint8 by the model's first QuantizeLinear)",
        "retraining": "No",
        "starting_weights_filename": weights,
        "weight_data_types": f"int8 ({config.calibration.weights}), int32 biases",
        "weight_transformations": "post-training quantization by calibration/quantize.py, steps: "
                                  + ", ".join(steps),
    }
    if report:
        float_top1 = 100 * float(report["evaluation"]["float_top1"])
        data["accuracy_target"] = {
            "float_top1_percent": round(float_top1, 3), "target_ratio": config.accuracy.target_ratio,
            "threshold_top1_percent": round(float_top1 * config.accuracy.target_ratio, 3),
            "source": "build/" + config.name + "/calibration_report.json (float model on the same images)"}
    return data


def scenario_readme(config: WorkloadConfig, scenario: str, profile: str, rules: BenchmarkRules) -> str:
    return (f"# {config.name} as MLPerf `{rules.name}`, {scenario}\n\n"
            f"Model: {config.description or config.name} (int8, calibrated by this repository).\n"
            f"System: `{config.harness.system}`. Duration profile: `{profile}`.\n\n"
            "Reproduce this folder, from the repository root in `src/`:\n\n"
            "```\n"
            f"make submission WORKLOAD={config.name} PROFILE={profile} SCENARIOS={scenario}\n"
            "```\n\n"
            "which runs, for this scenario:\n\n```\n"
            f"python -m harness.cli run --workload {config.name} --scenario {scenario} --mode both "
            f"--profile {profile}\n```\n\n"
            "and the compliance tests TEST01 and TEST04 with their audit.config files.\n")


def snapshot_sources(root: Path, target: Path) -> None:
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in SOURCE_PATHS:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, target / name)
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    status = subprocess.run([*git, "status", "--porcelain", "--", *SOURCE_PATHS], capture_output=True, text=True,
                            check=False)
    changes = status.stdout.strip()
    (target / "SOURCE.txt").write_text(
        f"git commit: {head.stdout.strip() or 'unknown (not a git checkout)'}\n"
        + (f"uncommitted changes at packaging time:\n{changes}\n" if changes else "working tree clean\n"))


def assemble_scenario(config: WorkloadConfig, profile: str, runs: dict[str, Path], base: RunRequest,
                      report: dict[str, Any] | None, target: Path, backup: Path) -> None:
    """One ``<Scenario>/`` folder from its finished runs, plus the compliance tests run with ``base``."""
    rules = benchmark_rules(config)
    scenario = base.scenario
    perf = target / "performance" / "run_1"
    perf.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy2(runs["performance"] / name, perf / name)
    copy_accuracy(runs["accuracy"], target / "accuracy", backup / "accuracy")
    shutil.copy2(runs["performance"] / "user.conf", target / "user.conf")
    (target / "measurements.json").write_text(json.dumps(measurements(config, report), indent=2) + "\n")
    (target / "README.md").write_text(scenario_readme(config, scenario, profile, rules))
    for test in rules.compliance_tests:
        log.info("compliance %s for %s %s", test, config.name, scenario)
        run_test(test, base, target)
        audited = target / test / "performance" / "run_1" / "mlperf_log_detail.txt"
        checks = {"verify_performance.txt": verify_performance(test, perf / "mlperf_log_detail.txt", audited)}
        if test == "TEST01":
            checks["verify_accuracy.txt"] = verify_accuracy(runs["accuracy"] / "mlperf_log_accuracy.json",
                                                            target / test / "accuracy/mlperf_log_accuracy.json")
        for name, verdict in checks.items():
            (target / test / name).write_text(verdict.text)


def write_org_files(org: Path, system: str, machine: Machine, cfg: SubmissionConfig,
                    documented: list[CalibratedWorkload], source_root: Path) -> None:
    """systems/<system>.json, documentation/calibration.md and the src/ snapshot."""
    (org / "systems").mkdir(parents=True)
    (org / "systems" / f"{system}.json").write_text(json.dumps(system_description(machine, cfg), indent=2) + "\n")
    (org / "documentation").mkdir()
    (org / "documentation" / "calibration.md").write_text(calibration_markdown(cfg.submitter, documented))
    snapshot_sources(source_root, org / "src")


def package(request: PackageRequest) -> Path:
    """Build the tree in a staging folder and rename it into place; return the org folder."""
    sub, cfg = submission_root(request.root), request.submission
    rules = benchmark_rules(request.config)
    for scenario in request.scenarios:
        parse_scenario(scenario)
    sub.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=sub))
    try:
        org, backup = staging / "tree", staging / "backup"
        config, root = request.config, request.root
        ensure_model(config, root, "int8")  # first: the reports read below describe this calibration, if it runs
        documented = [CalibratedWorkload(w, read_report(p), p.relative_to(root)) for w in request.documented
                      for p in [build_dir(root, w.name) / "calibration_report.json"]]
        write_org_files(org, config.harness.system, request.machine, cfg, documented, root)
        report = read_report(build_dir(root, config.name) / "calibration_report.json")
        relative = Path("results") / config.harness.system / rules.name
        for scenario in request.scenarios:
            runs = ensure_runs(request, scenario)
            assemble_scenario(config, request.profile, runs, compliance_request(request, scenario), report,
                              org / relative / scenario, backup / relative / scenario)
        final = inside(sub, sub / cfg.division / cfg.submitter)
        publish(backup, sub / "accuracy-backup" / cfg.division / cfg.submitter)
        publish(org, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("submission tree ready in %s", final)
    return final
