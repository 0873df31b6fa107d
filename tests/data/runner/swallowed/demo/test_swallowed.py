"""A SIGTERM whose KeyboardInterrupt Python swallows: the runner signals itself from an
os.fork() hook during the third case's fork, so the signal handler runs inside that hook, where
Python only reports an exception as "Exception ignored".  The run must still end, partial,
before the fifth case (lib.runner.interrupt.check at the next case boundary)."""

import os
import signal

import pytest

_forks: list[int] = []


def _after_fork_in_parent() -> None:
    _forks.append(1)
    if len(_forks) == 3:
        os.kill(os.getpid(), signal.SIGTERM)


os.register_at_fork(after_in_parent=_after_fork_in_parent)  # imported by the runner process


@pytest.mark.parametrize("n", range(5), ids=[f"quick case {i}" for i in range(5)])
def test_quick(n):
    pass
