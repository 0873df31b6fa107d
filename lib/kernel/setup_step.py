"""A case's setup steps on a kernel that claims what they need: a failure is a verdict, never a skip.

The project's rule: a skip comes only from a probe that is not the operation under test (a
feature bit, a config option, a sysfs knob, privilege, a hugetlb pool size).  Once the probes
said yes, the case's own setup -- mapping the memory the pool has pages for, UFFDIO_REGISTER
and UFFDIO_WRITEPROTECT on a kernel that offers the feature, a move_pages() the kernel
supports -- is part of what the kernel must do; an OSError there (lib.kernel.uffd.UffdError is one)
is a failure whose message names the step.  ``pytest.skip`` raised inside (a probe in the
block) passes through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class SetupFailed(AssertionError):
    """A setup step failed on a kernel whose probes said it is supported."""


def message(what: str, e: OSError) -> str:
    return f"setup step failed: {what}: {e} (the probes said this kernel supports it: a failure, not a skip)"


@contextlib.contextmanager
def required(what: str) -> Iterator[None]:
    """Run a setup step; an OSError becomes a SetupFailed naming ``what``."""
    try:
        yield
    except OSError as e:
        raise SetupFailed(message(what, e)) from e
