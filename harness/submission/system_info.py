"""What ``systems/<system>.json`` needs from the machine: CPU, cores, memory, storage, OS, software versions.

Each reader takes the filesystem root it reads from, so tests can point it at a fake ``/proc`` and ``/sys``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.submission.config import SubmissionConfig, SubmissionError

SOFTWARE = ("onnxruntime", "onnx", "numpy", "mlcommons-loadgen", "opencv-python-headless")


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    sockets: int
    cores_per_socket: int
    threads: int
    frequency_mhz: float
    caches: str
    memory_gib: float
    storage_gib: float
    storage_type: str
    operating_system: str
    python: str
    packages: dict[str, str]


def _cpuinfo(root: Path) -> list[dict[str, str]]:
    path = root / "proc" / "cpuinfo"
    if not path.is_file():
        raise SubmissionError(f"{path}: cannot read the CPU description")
    processors = []
    for block in path.read_text().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        if "processor" in entry:
            processors.append(entry)
    if not processors:
        raise SubmissionError(f"{path}: no processor entries")
    return processors


def _caches(root: Path) -> str:
    parts = []
    for index in sorted((root / "sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / n).read_text().strip() for n in ("level", "type", "size"))
        except OSError:
            continue
        parts.append(f"L{level} {kind[0]} {size}" if kind in ("Data", "Instruction") else f"L{level} {size}")
    return ", ".join(parts) or "not reported by the kernel"


def _memory_gib(root: Path) -> float:
    path = root / "proc" / "meminfo"
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    raise SubmissionError(f"{path}: no MemTotal line")


def _storage_type(root: Path) -> str:
    flags = [p.read_text().strip() for p in (root / "sys/block").glob("*/queue/rotational")
             if not p.parent.parent.name.startswith(("loop", "zram", "ram"))]
    if not flags:
        return "unknown"
    return "HDD" if all(f == "1" for f in flags) else "SSD"


def _operating_system(root: Path) -> str:
    path = root / "etc" / "os-release"
    fields = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        key, _, value = line.partition("=")
        fields[key] = value.strip('"')
    name = fields.get("PRETTY_NAME", platform.system())
    return f"{name} (kernel {platform.release()})"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def read_machine(root: Path = Path("/"), disk: Path = Path("/")) -> Machine:
    processors = _cpuinfo(root)
    first = processors[0]
    sockets = len({p.get("physical id", "0") for p in processors})
    cores = int(first.get("cpu cores", len(processors)))
    return Machine(
        cpu_model=first.get("model name", platform.processor() or "unknown CPU"),
        sockets=sockets, cores_per_socket=cores, threads=len(processors),
        frequency_mhz=float(first.get("cpu MHz", "0") or 0), caches=_caches(root),
        memory_gib=_memory_gib(root), storage_gib=shutil.disk_usage(disk).total / 1024**3,
        storage_type=_storage_type(root), operating_system=_operating_system(root),
        python=platform.python_version(), packages={p: _version(p) for p in SOFTWARE})


def system_description(machine: Machine, config: SubmissionConfig) -> dict[str, str]:
    """``systems/<system>.json``: every field the v6.0 checker requires, as non-empty strings."""
    pkgs = machine.packages
    memory = f"{machine.memory_gib:.1f} GB"
    return {
        "division": config.division, "submitter": config.submitter, "status": config.status,
        "system_name": config.system_name or f"{machine.cpu_model} (ONNX Runtime, CPU)",
        "system_type": config.system_type, "system_type_detail": "single-node CPU server",
        "number_of_nodes": "1",
        "host_processor_model_name": machine.cpu_model,
        "host_processors_per_node": str(machine.sockets),
        "host_processor_core_count": str(machine.cores_per_socket),
        "host_processor_vcpu_count": str(machine.threads),
        "host_processor_frequency": f"{machine.frequency_mhz:.0f} MHz (as reported by /proc/cpuinfo)",
        "host_processor_caches": machine.caches,
        "host_processor_interconnect": config.host_processor_interconnect,
        "host_memory_capacity": memory,
        "host_memory_configuration": config.host_memory_configuration or f"{memory} total (layout not readable)",
        "host_storage_capacity": f"{machine.storage_gib:.0f} GB",
        "host_storage_type": config.host_storage_type or machine.storage_type,
        "host_networking": config.host_networking, "host_networking_topology": config.host_networking_topology,
        "host_network_card_count": config.host_network_card_count,
        # No accelerator: the count as a string ("0" is meaningful; the checker rejects a falsy 0) and N/A.
        "accelerators_per_node": "0", "accelerator_model_name": "N/A", "accelerator_frequency": "N/A",
        "accelerator_host_interconnect": "N/A", "accelerator_interconnect": "N/A",
        "accelerator_interconnect_topology": "N/A", "accelerator_memory_capacity": "N/A",
        "accelerator_memory_configuration": "N/A", "accelerator_on-chip_memories": "N/A",
        "cooling": config.cooling,
        "framework": f"ONNX Runtime {pkgs['onnxruntime']} (CPUExecutionProvider)",
        "operating_system": machine.operating_system,
        "other_software_stack": (f"Python {machine.python}, mlcommons-loadgen {pkgs['mlcommons-loadgen']}, "
                                 f"onnx {pkgs['onnx']}, numpy {pkgs['numpy']}, "
                                 f"opencv-python-headless {pkgs['opencv-python-headless']}"),
        "hw_notes": config.hw_notes or "none", "sw_notes": config.sw_notes or "none",
    }
