"""The command line on issue 17's cases: a bad technique order fails before any work (case 10), an unsafe
workload name writes nothing (case 2), and a failed write is one line naming the path (case 7)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import cli

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A working directory with the workloads and submission.yaml, but no data/ and no build/."""
    shutil.copytree(ROOT / "workloads", tmp_path / "workloads")
    shutil.copy(ROOT / "submission.yaml", tmp_path / "submission.yaml")
    return tmp_path


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("command", [["calibrate"], ["run", "--scenario", "Offline"], ["submission"]])
def test_a_bad_step_order_fails_before_any_work(checkout: Path, command: list[str]) -> None:
    """Case 10: the order was checked only after the import and the image loading."""
    start = time.perf_counter()
    result = run_cli(*command, "--techniques", "profile,fold_bn", cwd=checkout)
    assert one_error(result) == ("error: 'fold_bn' must come before 'profile': "
                                 "int8 layers cannot hold a BatchNormalization")
    assert time.perf_counter() - start < 30  # no image was read: the import of the CLI is all it did
    assert not (checkout / "build").exists() and not (checkout / "data").exists()
    assert not (checkout / "results").exists()


def test_an_unsafe_workload_name_writes_nothing(checkout: Path, tmp_path: Path) -> None:
    """Case 2: this YAML once wrote a whole build outside the repository, with exit status 0."""
    data = yaml.safe_load((ROOT / "workloads" / "mobilenetv2.yaml").read_text())
    data["name"] = "../../../escaped_name_probe"
    (checkout / "evil.yaml").write_text(yaml.safe_dump(data))
    result = run_cli("calibrate", "--workload", "evil.yaml", cwd=checkout)
    assert "evil.yaml: name '../../../escaped_name_probe' is not a safe folder name" in one_error(result)
    assert not list(tmp_path.parent.parent.glob("**/escaped_name_probe"))
    assert not (checkout / "build").exists()


def test_a_permission_error_anywhere_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Case 7: a read-only build/ or results/ (for a user who is not root) ended in a PermissionError traceback.
    Writes through workload.files raise OutputError; any other OSError is caught by the CLI and named."""

    def denied(_args) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "results/cpu/x/Offline/.partial-1")

    monkeypatch.setitem(cli.COMMANDS, "results", (denied, "", False))
    assert cli.main(["results"]) == 2
    assert capsys.readouterr().err == "error: results/cpu/x/Offline/.partial-1: Permission denied\n"
