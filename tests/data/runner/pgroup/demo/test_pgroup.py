"""A case that forks a grandchild (same process group) which outlives nothing: it records its
pid in $KMM_PGROUP_PIDFILE and waits; the test SIGKILLs the runner and times how long the
grandchild lives on."""

import os
import select

import pytest


@pytest.mark.tap("forks a grandchild and waits")
@pytest.mark.deadline(120)
def test_grandchild():
    path = os.environ["KMM_PGROUP_PIDFILE"]
    pid = os.fork()
    if pid == 0:
        try:
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(path + ".tmp", path)
            select.select([], [], [], 120)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
