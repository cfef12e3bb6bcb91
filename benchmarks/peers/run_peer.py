"""Run one tool as a child process and measure what it cost: wall time and peak resident memory.

Each quantizer runs in its own process (often its own virtual environment), so that one tool's
imports, caches and allocator state never leak into another's figures. The peak comes from
``os.wait4``'s rusage (``ru_maxrss``, KiB on Linux): the largest resident set of the child and of
any descendants it waited for.

Linux records, at ``exec``, the high-water mark of the memory the new program replaces. Python starts
children with vfork, so a tool launched straight from a large process (the benchmark holds its
evaluation images) reports that process's peak as its own. The tool is therefore launched through this
file run as a small, isolated interpreter, which forks the tool and writes its figures to a JSON file:
the tool inherits a high-water mark of a few MiB instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

OUTPUT_TAIL_LINES = 20


class PeerError(RuntimeError):
    """The tool exited non-zero; the message carries the tail of its output."""


def run_measured(command: Sequence[str], cwd: Path | None = None) -> tuple[float, int]:
    """Run ``command`` (an argument list, never a shell string); return (wall seconds, peak RSS bytes)."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as output:
        report = Path(tmp) / "usage.json"
        launcher = [sys.executable, "-I", str(Path(__file__).resolve()), str(report), *command]
        returncode = subprocess.run(launcher, cwd=cwd, stdin=subprocess.DEVNULL, stdout=output,
                                    stderr=subprocess.STDOUT, check=False).returncode
        if returncode != 0 or not report.is_file():
            output.seek(0)
            tail = output.read().decode(errors="replace").splitlines()[-OUTPUT_TAIL_LINES:]
            raise PeerError(f"{command[0]} exited with status {returncode}:\n" + "\n".join(tail))
        usage = json.loads(report.read_text())
    return usage["seconds"], usage["peak_rss_bytes"]


def launch(report: Path, command: list[str]) -> int:
    """Run ``command`` and write its wall time and peak RSS to ``report``; returns its exit status."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode == 0:
        report.write_text(json.dumps({"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024}))
    return process.returncode


if __name__ == "__main__":
    sys.exit(launch(Path(sys.argv[1]), sys.argv[2:]))
