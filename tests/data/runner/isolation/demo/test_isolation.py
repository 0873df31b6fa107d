"""A case that blocks in a userfault nobody serves, one that dies of SIGBUS, one that passes."""

import os
import signal

import pytest

from lib import check
from lib.kernel import abi, libc, memory
from lib.kernel.uffd import open_for


@pytest.mark.tap("blocked on an unserved userfault")
@pytest.mark.deadline(2)
def test_blocked():
    r = memory.anon(4096)
    u = open_for(0)
    u.register(r.addr, r.size, abi.RegisterMode.MISSING)
    check.note(f"reading {r.addr:#x}, registered MISSING, no handler")
    libc.touch_read(r.addr)


@pytest.mark.tap("dies of SIGBUS")
def test_sigbus():
    r = memory.anon(4096)
    u = open_for(int(abi.Feature.SIGBUS))
    u.register(r.addr, r.size, abi.RegisterMode.MISSING)
    check.note("touching a page registered with UFFD_FEATURE_SIGBUS")
    libc.touch_read(r.addr)


@pytest.mark.tap("killed by SIGSEGV")
def test_segv():
    os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.tap("still runs after them")
def test_after():
    assert True
