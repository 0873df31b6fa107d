"""docs/ARCHITECTURE.md rule 6 for the THP-collapse area: every value under /sys/kernel/mm/transparent_hugepage
(khugepaged/* included) is the same before and after a run of the area, also when the run is
interrupted by SIGTERM in the middle of a khugepaged-context case (whose knobs differ most)."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.kernel import system

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.skipif(not system.is_root(), reason="needs root (the area changes THP sysfs)"),
    pytest.mark.skipif(not system.pmd_size(), reason="no THP"),
]
TRIGGER = "# [RUN] collapse_full (khugepaged:anon)"


def run_and_interrupt(tmp_path: Path, trigger: str, timeout: float = 900.0) -> tuple[int, str]:
    """Start `run_suite.py thp_collapse`, SIGTERM it once ``trigger`` appears, return (rc, output)."""
    p = subprocess.Popen([sys.executable, str(ROOT / "run_suite.py"), "thp_collapse", f"--results={tmp_path / 'r'}"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    deadline = time.monotonic() + timeout
    sent = False
    try:
        assert p.stdout is not None
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            line = p.stdout.readline()
            if not line:
                break
            out.append(line)
            if not sent and line.startswith(trigger):
                # the case's knobs are set in the pytest process before [RUN] is printed
                p.send_signal(signal.SIGTERM)
                sent = True
        rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert sent, "the run ended before the trigger case started:\n" + "".join(out[-20:])
    return rc, "".join(out)


def test_thp_settings_identical_after_sigterm(tmp_path: Path) -> None:
    before = system.thp_settings_snapshot()
    rc, out = run_and_interrupt(tmp_path, TRIGGER)
    after = system.thp_settings_snapshot()
    diff = {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert diff == {}, f"THP settings changed by an interrupted run: {diff}\n{out[-2000:]}"
    assert rc != 0, "an interrupted run must not exit 0"
    assert "PARTIAL RUN" in out or "interrupted" in out, out[-2000:]
