"""The calling process's effective capabilities (/proc/self/status CapEff, capabilities(7))."""

from __future__ import annotations

CAP_IPC_LOCK = 14


def effective() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def has(cap: int) -> bool:
    return bool(effective() & (1 << cap))
