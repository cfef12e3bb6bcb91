"""Submission tree: a golden tree from real (tiny) LoadGen runs with a fake backend, and planted defects."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.loadgen.isolated import RunRequest
from harness.loadgen.runner import RunSpec, result_dir, run_scenario
from harness.loadgen.scenarios import DurationProfile
from harness.submission.calibration_doc import CalibratedWorkload
from harness.submission.check import Problem, check_submission
from harness.submission.config import SubmissionConfig
from harness.submission.package import assemble_scenario, write_org_files
from harness.submission.system_info import read_machine
from tests.fakes import OracleBackend, write_tensors
from workload.config import HarnessConfig, load_workload

ROOT = Path(__file__).resolve().parents[2]
# Named "smoke" so the tree is judged as a smoke-profile tree; 300 ms keeps each LoadGen run short.
TINY = DurationProfile("smoke", 300, {"Offline": 1, "Server": 512, "SingleStream": 64, "MultiStream": 662})
LABELS = np.arange(64) % 10
REPORT = {"calibration": {"techniques": ["fold_bn", "profile"], "weights": "per-channel", "range": "mean_minmax"},
          "calibration_images": 500, "evaluation": {"float_top1": 0.8, "int8_top1": 0.79, "images": 64}}
SCENARIO = Path("closed/TestOrg/results/test/resnet/Offline")
EXPECTED_FILES = {
    "systems/test.json", "documentation/calibration.md",
    *(f"results/test/resnet/Offline/{name}" for name in (
        "README.md", "user.conf", "measurements.json",
        "performance/run_1/mlperf_log_summary.txt", "performance/run_1/mlperf_log_detail.txt",
        "accuracy/accuracy.txt", "accuracy/mlperf_log_accuracy.json", "accuracy/mlperf_log_summary.txt",
        "accuracy/mlperf_log_detail.txt",
        "TEST01/verify_accuracy.txt", "TEST01/verify_performance.txt", "TEST01/accuracy/mlperf_log_accuracy.json",
        "TEST01/performance/run_1/mlperf_log_summary.txt", "TEST01/performance/run_1/mlperf_log_detail.txt",
        "TEST04/verify_performance.txt", "TEST04/performance/run_1/mlperf_log_summary.txt",
        "TEST04/performance/run_1/mlperf_log_detail.txt")),
}


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/submission/ for one Offline scenario: accuracy, performance, TEST01 and TEST04 really run."""
    base = tmp_path_factory.mktemp("golden")
    tensors = write_tensors(base / "tensors.npy", LABELS)
    harness = HarnessConfig(system="test", offline_batch_size=8)
    backend = functools.partial(OracleBackend, delay_ms=1.0)
    runs = {}
    for mode in ("accuracy", "performance"):
        run_scenario(RunSpec("fake", "Offline", mode, TINY, harness, tensors, LABELS, 0, backend, base / "runs"))
        runs[mode] = result_dir(base / "runs", "test", "fake", "Offline", mode)
    config = load_workload(ROOT / "workloads" / "mobilenetv2.yaml")
    config = config.__class__(**{**config.__dict__, "harness": harness})
    request = RunRequest("Offline", "performance", TINY, harness, tensors, 0, backend, Path(),
                         "generated for fake Offline performance, profile smoke")
    sub = base / "submission"
    org = sub / "closed" / "TestOrg"
    write_org_files(org, "test", read_machine(), SubmissionConfig(submitter="TestOrg"),
                    [CalibratedWorkload(config, REPORT, Path("build/mobilenetv2/calibration_report.json"))], ROOT)
    assemble_scenario(config, "smoke", runs, request, REPORT, org / "results/test/resnet/Offline",
                      sub / "accuracy-backup/closed/TestOrg/results/test/resnet/Offline")
    return sub


def copy_of(golden: Path, tmp_path: Path) -> Path:
    shutil.copytree(golden, tmp_path / "submission")
    return tmp_path / "submission"


def check(sub: Path) -> list[Problem]:
    return check_submission(sub, sub / "accuracy-backup").problems


def defects(sub: Path) -> list[str]:
    """Problems that are not by design, less the two scenarios the one-scenario golden tree leaves out."""
    return [p.line() for p in check(sub) if not p.cause and "required edge scenario" not in p.message]


def test_golden_tree_has_the_v6_layout(golden: Path) -> None:
    org = golden / "closed" / "TestOrg"
    files = {str(p.relative_to(org)) for p in org.rglob("*") if p.is_file() and "src" not in p.parts}
    assert files == EXPECTED_FILES
    assert (org / "src" / "harness" / "submission" / "package.py").is_file()
    assert (org / "src" / "workload" / "config.py").is_file()
    assert (golden / "accuracy-backup" / SCENARIO.relative_to("closed") / "accuracy").is_dir() is False
    backup = golden / "accuracy-backup" / SCENARIO / "accuracy" / "mlperf_log_accuracy.json"
    assert len(json.loads(backup.read_text())) == 64  # the full log, one response per sample
    system = json.loads((org / "systems" / "test.json").read_text())
    assert system["accelerators_per_node"] == "0" and system["submitter"] == "TestOrg"
    assert "Verifying" not in (golden / SCENARIO / "TEST01" / "verify_accuracy.txt").read_text()
    assert (golden / SCENARIO / "TEST01" / "verify_accuracy.txt").read_text().splitlines()[-1] == "TEST PASS"
    assert "mobilenet_v2-b0353104.pth" in (golden / SCENARIO / "measurements.json").read_text()
    doc = (org / "documentation" / "calibration.md").read_text()
    assert "1. `fold_bn`" in doc and "2. `profile`" in doc and "float top-1 80.00%, int8 top-1 79.00%" in doc
    assert "make submission WORKLOAD=mobilenetv2 PROFILE=smoke SCENARIOS=Offline" in (
        golden / SCENARIO / "README.md").read_text()


def test_golden_tree_has_only_by_design_problems(golden: Path) -> None:
    problems = check(golden)
    assert [p.line() for p in problems if not p.cause] == [  # an edge system must submit all three
        "closed/TestOrg/results/test/resnet: required edge scenario MultiStream is missing",
        "closed/TestOrg/results/test/resnet: required edge scenario SingleStream is missing"]
    causes = {p.cause for p in problems if p.cause}
    assert causes == {"smoke profile", "sample dataset", "not the reference model"}
    assert any("min_duration 300 ms < 600000 ms" in p.message for p in problems)


def test_missing_file_is_caught(golden: Path, tmp_path: Path) -> None:
    sub = copy_of(golden, tmp_path)
    (sub / SCENARIO / "performance/run_1/mlperf_log_summary.txt").unlink()
    assert defects(sub) == [f"{SCENARIO}/performance/run_1/mlperf_log_summary.txt: missing"]


def test_wrong_hash_is_caught(golden: Path, tmp_path: Path) -> None:
    sub = copy_of(golden, tmp_path)
    accuracy = sub / SCENARIO / "accuracy" / "accuracy.txt"
    accuracy.write_text(re.sub(r"hash=[0-9a-f]{64}", "hash=" + "0" * 64, accuracy.read_text()))
    assert defects(sub) == [f"{SCENARIO}/accuracy/accuracy.txt: hash does not match mlperf_log_accuracy.json "
                            "(backup)"]


def test_edited_full_accuracy_log_is_caught(golden: Path, tmp_path: Path) -> None:
    sub = copy_of(golden, tmp_path)
    backup = sub / "accuracy-backup" / SCENARIO / "accuracy" / "mlperf_log_accuracy.json"
    backup.write_text(backup.read_text().replace('"qsl_idx" : 1,', '"qsl_idx" : 2,', 1))
    assert any("hash does not match" in line for line in defects(sub))


def test_too_short_duration_is_a_defect_outside_the_smoke_profile(golden: Path, tmp_path: Path) -> None:
    sub = copy_of(golden, tmp_path)
    conf = sub / SCENARIO / "user.conf"
    conf.write_text(conf.read_text().replace("profile smoke", "profile submission", 1))
    assert f"{SCENARIO}/performance/run_1/mlperf_log_detail.txt: min_duration 300 ms < 600000 ms" in defects(sub)


def test_accuracy_below_target_is_caught(golden: Path, tmp_path: Path) -> None:
    sub = copy_of(golden, tmp_path)
    measurements = sub / SCENARIO / "measurements.json"
    data = json.loads(measurements.read_text())
    data["accuracy_target"]["threshold_top1_percent"] = 100.5  # the fake is always right: 100% < 100.5%
    measurements.write_text(json.dumps(data))
    assert defects(sub) == [f"{SCENARIO}/accuracy/accuracy.txt: top-1 100.000% is below the workload target "
                            "100.500% (0.99 x float top-1 80.0%)"]


def test_changed_seed_is_caught(golden: Path, tmp_path: Path) -> None:
    sub = copy_of(golden, tmp_path)
    detail = sub / SCENARIO / "TEST04" / "performance" / "run_1" / "mlperf_log_detail.txt"
    detail.write_text(detail.read_text().replace('"effective_qsl_rng_seed", "value": 2085463073848966840',
                                                 '"effective_qsl_rng_seed", "value": 1', 1))
    assert defects(sub) == [f"{SCENARIO}/TEST04/performance/run_1/mlperf_log_detail.txt: qsl_rng_seed is 1, "
                            "the rules fix it to 2085463073848966840"]


def test_a_submission_that_calibrates_first_reads_that_calibrations_report(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17 case 11: on a fresh clone the report was read before the calibration the same command ran, so every
    measurements.json lacked accuracy_target. The calibration and the runs are stand-ins here; the order is real."""
    import harness.submission.package as package_module
    from harness.submission.package import PackageRequest, measurements, package
    from workload.result_set import ResultSet

    config = load_workload(ROOT / "workloads" / "mobilenetv2.yaml")
    calibrations: list[Path] = []

    def ensure_model(cfg, root: Path, _precision: str) -> Path:
        folder = root / "build" / cfg.name
        if not calibrations:  # nothing built yet: this call calibrates, as on a fresh clone
            result = ResultSet(folder, "calibration_report.json")
            result.stage("model.int8.onnx").write_bytes(b"int8")
            result.publish(REPORT)
            calibrations.append(folder)
        return folder / "model.int8.onnx"

    reports: list = []

    def assemble(_cfg, _profile, _runs, _base, report, target: Path, backup: Path) -> None:
        reports.append(report)
        target.mkdir(parents=True)
        backup.mkdir(parents=True)

    monkeypatch.setattr(package_module, "ensure_model", ensure_model)
    monkeypatch.setattr(package_module, "ensure_runs", lambda _request, _scenario: {})
    monkeypatch.setattr(package_module, "compliance_request", lambda _request, _scenario: None)
    monkeypatch.setattr(package_module, "assemble_scenario", assemble)
    monkeypatch.setattr(package_module, "snapshot_sources", lambda _root, target: target.mkdir(parents=True))
    package(PackageRequest(config, tmp_path, "smoke", ("Offline", "SingleStream"), SubmissionConfig(submitter="T"),
                           read_machine(), (config,)))
    assert len(calibrations) == 1 and len(reports) == 2
    for report in reports:
        assert measurements(config, report)["accuracy_target"]["threshold_top1_percent"] == pytest.approx(79.2)
