"""MLPerf compliance tests TEST01 (accuracy in performance mode) and TEST04 (same-sample performance).

Each test is a LoadGen performance run whose ``audit.config`` sits alone in a fresh working directory (the
harness's LoadGen child reads the audit file only from its log directory); the directory is removed afterwards.
Verification follows the official ``run_verification.py`` scripts and writes their ``verify_*.txt`` files.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from harness.loadgen.isolated import RunRequest, run_isolated
from harness.loadgen.runner import read_detail_log
from harness.submission.config import SubmissionError

log = logging.getLogger(__name__)

AUDIT_CONFIGS = {
    # compliance/TEST01/audit.config: log a random subset of responses in performance mode.
    "TEST01": ("*.*.mode = 2\n*.*.accuracy_log_rng_seed = 720381539243781796\n"
               "*.*.accuracy_log_sampling_target = 1024\n"),
    # compliance/TEST04/audit.config: issue the same sample over and over.
    "TEST04": "".join(f"*.{s}.mode = 2\n*.{s}.performance_issue_unique = 0\n*.{s}.performance_issue_same = 1\n"
                      f"*.{s}.performance_issue_same_index = 3\n"
                      for s in ("MultiStream", "Offline", "SingleStream", "Server")),
}
AUDIT_MARKERS = {"TEST01": ("effective_accuracy_log_sampling_target", 1024),
                 "TEST04": ("effective_performance_issue_same", True)}
SCORE_KEYS = {"Offline": "result_samples_per_second", "Server": "result_completed_samples_per_sec",
              "SingleStream": "early_stopping_latency_ss", "MultiStream": "early_stopping_latency_ms"}


@dataclass(frozen=True)
class Verdict:
    passed: bool
    text: str  # the verify_*.txt contents


def run_test(test: str, request: RunRequest, output: Path) -> None:
    """Run ``test`` with its audit.config in an isolated directory; copy its logs into ``output/<test>``."""
    work = Path(tempfile.mkdtemp(prefix=f"mlperf-{test}-"))
    try:
        (work / "audit.config").write_text(AUDIT_CONFIGS[test])
        run_isolated(replace(request, log_dir=work, mode="performance",
                             header=f"{request.header}, compliance {test}"))
        detail = read_detail_log(work / "mlperf_log_detail.txt")
        key, expected = AUDIT_MARKERS[test]
        if detail.get(key) != expected:
            raise SubmissionError(f"{work / 'mlperf_log_detail.txt'}: LoadGen did not apply {test}'s audit.config "
                                  f"({key} is {detail.get(key)!r}, expected {expected})")
        perf = output / test / "performance" / "run_1"
        perf.mkdir(parents=True)
        for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
            shutil.copy2(work / name, perf / name)
        if test == "TEST01":
            (output / test / "accuracy").mkdir()
            shutil.copy2(work / "mlperf_log_accuracy.json", output / test / "accuracy" / "mlperf_log_accuracy.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def performance_score(detail_log: Path) -> tuple[str, float]:
    """The scenario and a higher-is-better score: samples/s, or 1e9 / latency_ns for the latency scenarios."""
    detail = read_detail_log(detail_log)
    scenario = str(detail.get("effective_scenario", ""))
    if scenario not in SCORE_KEYS or SCORE_KEYS[scenario] not in detail:
        raise SubmissionError(f"{detail_log}: no {SCORE_KEYS.get(scenario, 'result')} entry for '{scenario}'")
    value = float(detail[SCORE_KEYS[scenario]])
    return scenario, (1e9 / value if scenario in ("SingleStream", "MultiStream") else value)


def _threshold(scenario: str, reference: float) -> float:
    # verify_performance.py relaxes the threshold to 20% for short-latency (noisy) single/multi-stream runs.
    if (scenario == "SingleStream" and reference <= 200_000) or (scenario == "MultiStream" and reference <= 1_600_000):
        return 0.20
    return 0.10


def verify_performance(test: str, reference_log: Path, test_log: Path) -> Verdict:
    """TEST01: the audited run scores within the threshold of the submission run. TEST04: not faster than it."""
    ref_scenario, reference = performance_score(reference_log)
    test_scenario, score = performance_score(test_log)
    valid = {p: read_detail_log(p).get("result_validity") for p in (reference_log, test_log)}
    lines = [f"reference score = {reference}", f"test score = {score}"]
    threshold = _threshold(ref_scenario, reference)
    if ref_scenario != test_scenario:
        lines.append("TEST FAIL: Test and reference scenarios do not match")
    elif "INVALID" in valid.values():
        lines.append("TEST FAIL: " + ", ".join(f"{p.name} is INVALID" for p, v in valid.items() if v == "INVALID"))
    elif test == "TEST04":
        lines.append("TEST PASS" if score < reference * (1 + threshold) else "TEST FAIL: Test score invalid")
    else:
        within = reference * (1 - threshold) < score < reference * (1 + threshold)
        lines.append("TEST PASS" if within else "TEST FAIL: Test score invalid")
    return Verdict(lines[-1] == "TEST PASS", "\n".join(lines) + "\n")


def _responses(path: Path) -> list[dict[str, object]]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SubmissionError(f"{path}: cannot read the accuracy log ({err})") from err
    if not isinstance(entries, list):
        raise SubmissionError(f"{path}: expected a list of responses")
    return entries


def verify_accuracy(reference_log: Path, test_log: Path) -> Verdict:
    """TEST01: every response logged in performance mode equals the accuracy run's response for that sample."""
    reference: dict[object, object] = {}
    duplicates = mismatched_duplicates = 0
    for entry in _responses(reference_log):
        if entry["qsl_idx"] in reference:
            duplicates += 1
            mismatched_duplicates += reference[entry["qsl_idx"]] != entry["data"]
        else:
            reference[entry["qsl_idx"]] = entry["data"]
    performance = _responses(test_log)
    matched = [e for e in performance if e["qsl_idx"] in reference]
    mismatched = sum(reference[e["qsl_idx"]] != e["data"] for e in matched)
    lines = [f"num_acc_log_entries = {sum(1 for _ in reference) + duplicates}",
             f"num_acc_log_duplicate_keys = {duplicates}", f"num_acc_log_data_mismatch = {mismatched_duplicates}",
             f"num_perf_log_entries = {len(performance)}", f"num_perf_log_qsl_idx_match = {len(matched)}",
             f"num_perf_log_data_mismatch = {mismatched}",
             f"num_missing_qsl_idxs = {len(performance) - len(matched)}"]
    passed = mismatched == 0 and len(matched) > 0
    lines.append("TEST PASS" if passed else "TEST FAIL")
    return Verdict(passed, "\n".join(lines) + "\n")
