"""Ending a run on SIGTERM, SIGHUP or SIGINT, with a partial report.

The signal handler raises KeyboardInterrupt, which pytest turns into an interrupted session
(conftest records the reason in the report).  A Python exception raised by a signal handler is
lost, though, when the signal lands while Python runs a callback whose exceptions it only
reports as "Exception ignored": a finalizer, a weakref or gc callback, or an os.fork() hook
(logging registers one, and the runner forks once per case).  So the reason is also kept here,
and :func:`check` raises it again at the next case boundary.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

reason: str | None = None  # set by the first signal; never cleared within a run


def interrupted(why: str) -> KeyboardInterrupt:
    exc = KeyboardInterrupt()
    exc.kmm_reason = why  # type: ignore[attr-defined]
    return exc


def on_signal(signum: int, frame: FrameType | None) -> None:
    global reason
    why = f"interrupted ({signal.Signals(signum).name})"
    if reason is None:
        reason = why
    raise interrupted(why)


def install() -> None:
    # SIGINT too: a runner started in the background of a non-interactive shell inherits
    # SIGINT ignored, and Python then leaves it ignored; Ctrl-C must still end the run cleanly
    for sig in SIGNALS:
        signal.signal(sig, on_signal)


def check() -> None:
    """Raise the interruption again if a signal came (its first raise may have been swallowed)."""
    if reason is not None:
        raise interrupted(reason)
