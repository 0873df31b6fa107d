"""lib.kernel.setup_step: a failing setup step is a failure naming the step; a probe's skip passes through."""

from __future__ import annotations

import errno

import pytest

from lib.kernel import setup_step
from lib.kernel.uffd import UffdError
from lib.runner import isolation


def test_oserror_becomes_a_failure_naming_the_step() -> None:
    failed = pytest.raises(setup_step.SetupFailed, match=r"^setup step failed: register it: .*UFFDIO_REGISTER")
    with failed, setup_step.required("register it"):
        raise UffdError(errno.EINVAL, "UFFDIO_REGISTER")


def test_a_probe_skip_inside_passes_through() -> None:
    with pytest.raises(pytest.skip.Exception, match="no pool"), setup_step.required("map it"):
        pytest.skip("no pool")


def test_the_isolation_layer_reports_it_as_a_failure() -> None:
    def body() -> None:
        with setup_step.required("map it"):
            raise OSError(errno.ENOMEM, "mmap")

    o = isolation.run_isolated(body, 10, skip_types=(pytest.skip.Exception,))
    assert (o.kind, o.message.split(":")[0]) == ("fail", "setup step failed"), (o.kind, o.message)
