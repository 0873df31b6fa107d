"""What the negative controls share: run a control isolated, as a case runs, and expect an
oracle to fail on memory or state that breaks the behaviour it checks (docs/ARCHITECTURE.md
rule 3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from lib.kernel import system
from lib.runner import isolation


def passes(fn: Callable[[], object], timeout: float = 60.0) -> str:
    """Run ``fn`` in a forked child with a deadline; a skip skips the test, anything but a pass
    fails it.  Returns the case's message."""
    o = isolation.run_isolated(fn, timeout, skip_types=(pytest.skip.Exception,))
    if o.kind == "skip":
        pytest.skip(o.message)
    assert o.kind == "pass", f"{o.kind}: {o.message}\n{o.details}"
    return o.message


def fails(fn: Callable[..., object], *args: object, contains: str = "") -> str:
    """``fn(*args)`` must raise AssertionError naming ``contains``; returns its message."""
    try:
        fn(*args)
    except AssertionError as e:
        assert contains in str(e), str(e)
        return str(e)
    raise AssertionError(f"{getattr(fn, '__name__', fn)} passed where it must fail")


@contextmanager
def hugetlb_pages(size: int, count: int) -> Iterator[None]:
    """``count`` hugetlb pages of ``size``, taken under the suite's machine-wide run lock and
    journal (lib.kernel.system.SETTINGS) and put back afterwards; skips without root, without
    that size, or when the run lock stays busy."""
    if not system.is_root() or not size or size not in system.hugetlb_sizes():
        pytest.skip(f"needs root and {system.size_label(size)} hugetlb pages")
    if not system.SETTINGS.acquire(timeout=600):
        pytest.skip("the suite's run lock stayed busy")
    try:
        system.SETTINGS.ensure_hugetlb(size, count)
        yield
    finally:
        system.SETTINGS.restore()
        system.SETTINGS.release()
