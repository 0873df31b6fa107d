"""A case that names no step and never ends: its TIMEOUT names the function and line it was in
(read from the case process's stack at the deadline), one blocked in a userfault likewise."""

import select

import pytest

from lib.kernel import abi, libc, memory
from lib.kernel.uffd import open_for


def wait_forever() -> None:
    select.select([], [], [], 3600)  # WAITS HERE


@pytest.mark.tap("waits without naming a step")
@pytest.mark.deadline(1)
def test_waits():
    wait_forever()


@pytest.mark.tap("faults without naming a step")
@pytest.mark.deadline(1)
def test_faults():
    r = memory.anon(4096)
    u = open_for(0)
    u.register(r.addr, r.size, abi.RegisterMode.MISSING)
    libc.touch_read(r.addr)  # FAULTS HERE
