"""What a fault server is asked to do and what it reports: :class:`Options` (how faults are
resolved, the negative controls, the injected step delays), :class:`Stats`, and the named steps
of the serve/install path where a test parks a thread (:class:`Barrier`) or injects a delay.

A barrier parks the thread serving a given page at a step until the test releases it
(deterministic races without sleeps); a step delay is a perturbation for stress tests, never a
synchronisation.  tests/test_handler_delays.py holds every placement at every step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

# Steps of the serve/install path (barrier points and delay points).  The fault path's, in order:
BEFORE_LOCK = "before_lock"  # the fault is in hand, before the install gate
BEFORE_RESOLVE = "before_resolve"  # about to fetch its source page (populate_buffers) and enter the gate
AFTER_CHOOSE = "after_choose"  # in the gate: source or zeros chosen, the install not yet issued
AFTER_INSTALL = "after_install"  # the install ioctl succeeded; not yet booked nor woken
AFTER_RELEASE = "after_release"  # a worker left the gate (workers only)
# the serve loop's (page ANY_PAGE); with workers both are inside the gate
AFTER_READ = "after_read"  # read(2) returned; the read's REMOVE pages not yet marked
AFTER_MARK = "after_mark"  # the read's REMOVE pages marked
FAULT_STEPS = (BEFORE_LOCK, BEFORE_RESOLVE, AFTER_CHOOSE, AFTER_INSTALL, AFTER_RELEASE)
LOOP_STEPS = (AFTER_READ, AFTER_MARK)
STEPS = FAULT_STEPS + LOOP_STEPS
ANY_PAGE = -1
GATED_STEPS = frozenset({AFTER_CHOOSE, AFTER_INSTALL, AFTER_READ, AFTER_MARK})


def parked_blocks_reads(step: str, options: Options) -> bool:
    """Whether a thread parked at ``step`` keeps the serve loop from reading the uffd (so a
    REMOVE queued meanwhile stays unread and madvise blocked): with workers, the steps inside
    the install gate; without, every step (the serve loop is the thread parked)."""
    if not options.workers:
        return True
    return step in GATED_STEPS and not options.old_install_order


CLEAN, DIRTY, ZERO, REMOVED = "clean", "dirty", "zero", "removed"

# enum members looked up once (an Enum attribute access costs more than the int compare)


@dataclass
class Options:
    """How faults are resolved."""

    copy_mode_wp: bool = False  # install every page write-protected (e2b "always WP")
    copy_mode_wp_reads: bool = False  # install read faults write-protected, write faults not (e2b default)
    zero: bool = False  # serve every missing fault with zeros
    use_zeropage_ioctl: bool = True  # zeros via UFFDIO_ZEROPAGE (not on hugetlb)
    minor: bool = False  # resolve MINOR faults with UFFDIO_CONTINUE
    workers: int = 0  # 0: resolve in the serve loop; N: N worker threads
    wrong_source_before_lock: bool = False  # negative control for the stale-source race
    old_install_order: bool = False  # negative control: the install ordering before issue 13
    ignore_remove: bool = False  # negative control: treat REMOVE as a no-op
    wrong_page: bool = False  # negative control: serve the next source page instead of the right one
    reject_write_missing: bool = False  # uffd-unit-tests: a MISSING fault must be a read
    follow_fork: bool = True  # serve the child's uffd from a FORK event as well
    # populate the zero buffer and each source page before UFFDIO_COPY: a hugetlb copy whose
    # source is not mapped in needs a second, unreserved huge page (mm/hugetlb.c bounce folio)
    populate_buffers: bool = False
    # test hook: seconds to stall at a step of STEPS (a perturbation, never a synchronisation)
    step_delays: dict[str, float] = field(default_factory=dict)


@dataclass
class Stats:
    missing: int = 0
    wp: int = 0
    minor: int = 0
    eexist: int = 0
    eagain: int = 0
    errors: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # every non-fault event, in order
    faults: list[dict] = field(default_factory=list)  # every fault message, in order
    states: dict[int, str] = field(default_factory=dict)  # page index -> state
    log: list[str] = field(default_factory=list)  # serve-loop order: read / applied / dispatched


class Barrier:
    def __init__(self, page: int, point: str) -> None:
        self.page, self.point = page, point
        self.arrived = threading.Event()
        self.released = threading.Event()
