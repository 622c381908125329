"""Where each process runs: the model server on its own core(s), everything else on the others.

The split imitates a separate inference box: Triton gets ``model_cpus``; the consumer, Kafka,
Milvus and the load generator (this harness) share ``consumer_cpus``. Pinning happens at exec
with ``taskset``, because XLA and the JVM size their thread pools from the CPUs they see when
they start. On a one-core machine nothing can be split: the run is unpinned and says so.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.exceptions import BenchFatalError

#: Set in the environment of the re-executed harness: the CPUs the original process could use.
PINNED_ENV = "IMAGE_EMBEDDER_BENCH_CPUS"


def parse_cpu_list(text: str) -> set[int]:
    """``"0-2,5"`` -> ``{0, 1, 2, 5}`` (the taskset / cpuset list syntax)."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise BenchFatalError(f"not a CPU list: {text!r}")
        cpus.update(range(int(low), int(high if sep else low) + 1))
    return cpus


def cpu_list(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0,1,2,5"``."""
    return ",".join(str(c) for c in sorted(cpus))


@dataclass(frozen=True)
class CpuLayout:
    """Which CPUs the model server and the rest get; ``pinned`` is False on a one-core machine."""

    pinned: bool
    available: str
    model_cpus: str | None
    consumer_cpus: str | None
    note: str

    def pin(self, cmd: Sequence[str], cpus: str | None) -> list[str]:
        """``cmd`` prefixed with ``taskset -c cpus`` (unchanged when ``cpus`` is None)."""
        return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)

    def lines(self) -> list[str]:
        """The layout as printable lines."""
        if not self.pinned:
            return [f"CPU layout: unpinned ({self.note})"]
        return [
            f"CPU layout ({self.note}):",
            f"  CPU {self.model_cpus}: model server (Triton)",
            f"  CPU {self.consumer_cpus}: consumer, Kafka, Milvus, load generator and prober",
        ]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_layout(available: set[int], model_cpus: str | None = None) -> CpuLayout:
    """Split ``available`` CPUs: ``model_cpus`` (default: the first one) and all the others."""
    shown = cpu_list(available)
    if len(available) < 2:
        return CpuLayout(
            False, shown, None, None, f"only {len(available)} CPU available, nothing to split"
        )
    if shutil.which("taskset") is None:
        return CpuLayout(False, shown, None, None, "taskset is not installed")
    model = parse_cpu_list(model_cpus) if model_cpus else {min(available)}
    if not model <= available:
        raise BenchFatalError(f"--model-cpus {model_cpus!r} is not within the CPUs {shown}")
    rest = available - model
    if not rest:
        raise BenchFatalError(f"--model-cpus {model_cpus!r} leaves no CPU for the consumer")
    note = f"{len(available)} CPUs: {len(model)} for the model, {len(rest)} for the rest"
    return CpuLayout(True, shown, cpu_list(model), cpu_list(rest), note)


def reexec_pinned(layout: CpuLayout, argv: Sequence[str]) -> None:
    """Re-run this harness under ``taskset -c <consumer cpus>`` (once), before JAX is imported."""
    if not layout.pinned or os.environ.get(PINNED_ENV):
        return
    if os.sched_getaffinity(0) == parse_cpu_list(layout.consumer_cpus or ""):
        return
    os.environ[PINNED_ENV] = layout.available
    cmd = layout.pin([sys.executable, "-m", "bench", *argv], layout.consumer_cpus)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)


def inherited_cpus() -> set[int] | None:
    """In the re-executed harness: the CPUs the original process could use (else None)."""
    text = os.environ.get(PINNED_ENV)
    return parse_cpu_list(text) if text else None


def source_version(root: Path) -> str:
    """The commit the harness runs from, with ``-dirty`` when the work tree has changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{commit}-dirty" if commit and dirty else commit or "unknown"


def machine_info() -> dict[str, Any]:
    """The machine the figures come from: CPU model (lscpu), counts, memory, software."""
    info: dict[str, Any] = {
        "cpu_model": platform.processor() or "unknown",
        "cpus_online": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if fields.get("Model name"):
        info["cpu_model"] = fields["Model name"]
    for key, name in (
        ("Vendor ID", "cpu_vendor"),
        ("Thread(s) per core", "threads_per_core"),
        ("Hypervisor vendor", "hypervisor"),
        ("CPU max MHz", "cpu_max_mhz"),
        ("BogoMIPS", "bogomips"),
        ("L2 cache", "l2_cache"),
        ("L3 cache", "l3_cache"),
    ):
        if fields.get(key):
            info[name] = fields[key]
    try:
        meminfo = Path("/proc/meminfo").read_text()
        match = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
        if match:
            info["memory_gib"] = round(int(match.group(1)) / 1024 / 1024, 1)
    except OSError:
        pass
    return info
