"""Run one tool as a child process and measure what it cost: wall time and peak resident memory.

Each quantizer runs in its own process (often its own virtual environment), so that one tool's
imports, caches and allocator state never leak into another's figures. The peak comes from
``os.wait4``'s rusage (``ru_maxrss``, KiB on Linux): the largest resident set of the child and of
any descendants it waited for.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

OUTPUT_TAIL_LINES = 20


class PeerError(RuntimeError):
    """The tool exited non-zero; the message carries the tail of its output."""


def run_measured(command: Sequence[str], cwd: Path | None = None) -> tuple[float, int]:
    """Run ``command`` (an argument list, never a shell string); return (wall seconds, peak RSS bytes)."""
    with tempfile.TemporaryFile() as output:
        start = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=cwd, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            output.seek(0)
            tail = output.read().decode(errors="replace").splitlines()[-OUTPUT_TAIL_LINES:]
            raise PeerError(f"{command[0]} exited with status {process.returncode}:\n" + "\n".join(tail))
    return seconds, usage.ru_maxrss * 1024
