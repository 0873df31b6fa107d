"""The machine a benchmark ran on: CPU model, cores, memory, kernel, compiler (for the records)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess


def _lscpu() -> dict[str, str]:
    if not shutil.which("lscpu"):
        return {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def _meminfo_kb(key: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def _cc_version() -> str:
    cc = shutil.which("cc")
    if not cc:
        return ""
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def describe() -> dict:
    cpu = _lscpu()
    un = os.uname()
    return {
        "cpu_model": cpu.get("Model name", platform.processor() or "?"),
        "cpus": os.cpu_count(),
        "cores_per_socket": cpu.get("Core(s) per socket", "?"),
        "hypervisor": cpu.get("Hypervisor vendor", ""),
        "mem_total_kib": _meminfo_kb("MemTotal"),
        "kernel_release": un.release,
        "kernel_version": un.version,
        "machine": un.machine,
        "python": platform.python_version(),
        "cc": _cc_version(),
    }


def headline(m: dict) -> str:
    hv = f" ({m['hypervisor']} guest)" if m.get("hypervisor") else ""
    return (f"{m['cpu_model']}{hv}, {m['cpus']} CPUs, {m['mem_total_kib'] // 1024 // 1024} GiB, "
            f"Linux {m['kernel_release']} {m['machine']}, Python {m['python']}")
