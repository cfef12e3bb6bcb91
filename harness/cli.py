"""Command line: the only place that reads arguments and environment variables.

Every user-fixable problem ends as one ``error: ...`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from calibration.steps.techniques import check_techniques
from harness.sample_data import fill_calibration_lists, fill_sample_images
from workload.config import (
    BACKENDS,
    RANGE_METHODS,
    WEIGHT_GRANULARITIES,
    WorkloadConfig,
    load_workload,
    with_overrides,
)
from workload.errors import HarnessError, WorkloadError
from workload.paths import results_root

log = logging.getLogger("harness")

ROOT = Path.cwd()
DEFAULT_SAMPLES = "data/imagenet-samples"


def resolve_workload(name: str) -> Path:
    """``mobilenetv2`` means ``workloads/mobilenetv2.yaml``; a path to a YAML file is taken as is."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    candidate = ROOT / "workloads" / f"{name}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "workloads").glob("*.yaml")))
        raise WorkloadError(f"unknown workload '{name}' (known: {known})")
    return candidate


def env_path(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value) if value else None


def samples_source() -> Path | None:
    return env_path("IMAGENET_SAMPLES_DIR")


def load_config(args: argparse.Namespace) -> WorkloadConfig:
    config = load_workload(resolve_workload(args.workload))
    config = with_overrides(config, getattr(args, "weights", None), getattr(args, "range", None),
                            getattr(args, "techniques", None), getattr(args, "backend", None))
    check_techniques(config.calibration.techniques)  # before any image is read
    if config.dataset.images == DEFAULT_SAMPLES and not (ROOT / DEFAULT_SAMPLES / "val_map.txt").is_file():
        fill_sample_images(ROOT / DEFAULT_SAMPLES, samples_source())
    return config


def cmd_data(_args: argparse.Namespace) -> int:
    target = fill_sample_images(ROOT / DEFAULT_SAMPLES, samples_source())
    log.info("sample images ready in %s", target)
    lists = fill_calibration_lists(ROOT / "data" / "mlperf-calibration", env_path("MLPERF_CALIBRATION_DIR"))
    log.info("MLPerf calibration lists ready in %s", lists)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from calibration.pipeline import format_summary
    from harness.workflow import calibrate_workload

    summary, htp = calibrate_workload(load_config(args), ROOT, args.eval_limit)
    print(format_summary(summary))
    if htp is not None:
        from harness.htp_target import format_htp

        print(format_htp(htp))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.workflow import describe, run_workload

    summaries = run_workload(load_config(args), ROOT, args.scenario, args.mode, args.profile, args.precision,
                             args.eval_limit)
    for summary in summaries:
        print(describe(summary))
    invalid = [s["mode"] for s in summaries if s.get("performance", {}).get("validity", "VALID") != "VALID"]
    if invalid:
        print("error: LoadGen judged the performance run INVALID; see mlperf_log_summary.txt", file=sys.stderr)
        return 1
    return 0


def cmd_results(_args: argparse.Namespace) -> int:
    from harness.results_table import collect, write_table

    table = collect(results_root(ROOT))
    if table.empty:
        raise HarnessError("no runs under results/ yet: run `make run` first")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    write_table(table, results_root(ROOT) / "results.csv")
    print(f"wrote {results_root(ROOT) / 'results.csv'}")
    return 0


def cmd_submission(args: argparse.Namespace) -> int:
    from harness.submission.check import check_submission, format_report
    from harness.submission.config import load_submission_config
    from harness.submission.package import PackageRequest, benchmark_rules, package, submission_root
    from harness.submission.system_info import read_machine
    from workload.config import load_workload

    submission = load_submission_config(ROOT / "submission.yaml")
    config = load_config(args)
    benchmark_rules(config)
    required = {"edge": "Offline,SingleStream,MultiStream", "datacenter": "Offline,Server"}
    names = args.scenarios or ",".join(dict.fromkeys(
        s for t in submission.system_type.split(",") for s in required[t.strip()].split(",")))
    documented = tuple(load_workload(p) for p in sorted((ROOT / "workloads").glob("*.yaml")))
    request = PackageRequest(config, ROOT, args.profile, tuple(n.strip() for n in names.split(",") if n.strip()),
                             submission, read_machine(), documented)
    org = package(request)
    print(f"submission tree: {org}")
    report = check_submission(submission_root(ROOT), submission_root(ROOT) / "accuracy-backup")
    for line in format_report(report):
        print(line)
    return 0


def cmd_check_submission(_args: argparse.Namespace) -> int:
    from harness.submission.check import check_submission, format_report
    from harness.submission.package import submission_root

    root = submission_root(ROOT)
    report = check_submission(root, root / "accuracy-backup")
    for line in format_report(report):
        print(line)
    return 1 if report.problems else 0


def add_submission_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="smoke", help="smoke (short) or submission (official durations)")
    parser.add_argument("--scenarios", default="", help="comma-separated scenarios (default: the ones the "
                        "system_type in submission.yaml requires)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="Offline", help="Offline, SingleStream, MultiStream or Server")
    parser.add_argument("--mode", default="both", help="accuracy, performance or both")
    parser.add_argument("--profile", default="smoke", help="smoke (short) or submission (official durations)")
    parser.add_argument("--precision", default="int8", help="int8 (calibrated) or fp32 (the imported model)")


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="mobilenetv2", help="workload name or YAML path")
    parser.add_argument("--weights", choices=WEIGHT_GRANULARITIES, help="override the YAML")
    parser.add_argument("--range", choices=RANGE_METHODS,
                        help="override the YAML's range method")
    parser.add_argument("--techniques", help="comma-separated technique list overriding the YAML")
    parser.add_argument("--backend", choices=BACKENDS, help="override the YAML's harness.backend")
    parser.add_argument("--eval-limit", type=positive_int, default=None,
                        help="on the QNN HTP emulator (about 1 s an image), evaluate only the first N images")


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, bool]] = {
    # name: (handler, help, takes workload arguments)
    "data": (cmd_data, "fill data/imagenet-samples", False),
    "calibrate": (cmd_calibrate, "import, calibrate and evaluate the int8 model", True),
    "run": (cmd_run, "run LoadGen (accuracy and/or performance) on the calibrated model", True),
    "results": (cmd_results, "table of all runs under results/ (printed and written as CSV)", False),
    "submission": (cmd_submission, "build the MLPerf submission tree under results/submission/", True),
    "check-submission": (cmd_check_submission, "check results/submission/ against the MLPerf rules", False),
}
EXTRA_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {"run": add_run_arguments,
                                                                         "submission": add_submission_arguments}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (handler, help_text, takes_workload) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if takes_workload:
            add_workload_arguments(command)
        if name in EXTRA_ARGUMENTS:
            EXTRA_ARGUMENTS[name](command)
        command.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write outside workload.files (LoadGen's logs, the submission's copies)
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Calibrations, runs and submissions publish only when finished (ResultSet, staging folders), and an
        # unfinished calibration report is never taken as up to date, so the next command redoes what was cut.
        print("interrupted: what this command had not finished was discarded (no result is left half-written)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
