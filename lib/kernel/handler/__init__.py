"""Fault servers: the userfaultfd handler the cases talk to, in three placements.

* :class:`ThreadHandler`: the serve loop in a thread of the faulting process (uffd-unit-tests'
  poll thread).  The faulting side must touch memory only through lib.kernel.libc (docs/ARCHITECTURE.md rule 1).
* :class:`ProcessHandler`: the serve loop in a forked process.
* :class:`SpawnedHandler`: a fresh ``python -m lib.kernel.handler`` process that receives the uffd and
  the source memfd over a unix socket with SCM_RIGHTS, the way a VMM hands the uffd of a guest
  to its memory server (Firecracker, e2b).

All three expose one control interface (pause/resume, stats, barriers, stop).  The serve loop:

1. reads every pending message (up to 64) in one read(2) (reading is what releases a REMOVE
   waiter; it never waits for a worker that is *parked*, only for installs in flight);
2. marks the pages of the read's REMOVE events removed before anything else can choose a source
   (with worker threads: inside the read's side of the *install gate*, see below), then
   dispatches the batch's page faults, so a REMOVE is never overtaken by a fault read with it;
3. resolves each fault inline or on a worker thread: choose the source (zeros once the page was
   removed, else the source page), then UFFDIO_COPY (optionally COPY_MODE_WP), ZEROPAGE,
   CONTINUE or WRITEPROTECT, then book the page's state.  EEXIST wakes instead; EAGAIN (an event
   is pending, or read but its waiter has not yet run again) retries from the source choice
   after the serve loop's next read or a millisecond (an inline serve loop reads the pending
   event itself: nobody else would).

The REMOVE race (fs/userfaultfd.c userfaultfd_remove(), mm/madvise.c): madvise queues the
REMOVE and sleeps until it is *read*; from then on it zaps and returns, and a UFFDIO_COPY that
lands after the zap succeeds.  So a source chosen before the read must never be installed after
it.  Workers therefore choose and install inside the install gate (gate.py :class:`RWLock`, shared by
installs, taken exclusively by the serve loop around read(2) and the marking of the read's
REMOVE pages): an install either completes before the read (and madvise's zap, which comes
after the read, discards it) or chooses after the pages are marked.  An install in flight
delays the read by one ioctl; from 6.8 the kernel itself makes madvise wait for it
(ctx->map_changing_lock) before it even queues the REMOVE.  Barrier points and anything slow
(fetching the source page) stay outside the gate, so a parked worker never holds up madvise.
A removed mark is never cleared: after the REMOVE the page's content is zeros for good (the
source no longer describes it), and a mark cleared before an install lands would let a
concurrent fault for the same page pick the stale source (issue 13).  Only pages wholly inside
the range count: hugetlbfs MADV_REMOVE zeroes a partial head/tail page in place and keeps it
mapped.

Book-keeping never claims a state the kernel does not have, and a faulting thread that returns
already finds its page booked: the serve loop holds the statistics lock across the install
ioctl and its booking (one step for any observer, snapshot() included); a worker, or a fault
parked at a barrier, installs with DONTWAKE, books, then wakes the faulting thread (UFFDIO_WAKE).

The fault path is where the suite spends its handler time (bench/fault_service.py measures it
against a C handler doing the same job).  With no worker threads, no barrier and no negative
control, MISSING and WP faults go through a resolver closure built once per uffd
(fast_path.py, built by :meth:`FaultServer._inline_resolver`): the same steps as the general path without the gate,
which only matters when workers run; tests/test_handler_fast_path.py keeps the two paths equal.
The serve loop polls, then reads, as uffd-unit-tests' poll thread does, and logs raw message
words that :meth:`FaultServer.snapshot` renders to text on demand.

Test hooks, at the named steps of :data:`STEPS`: a barrier (``install_barrier(page, step)``)
parks the thread serving a given page (the serve loop's own steps use page :data:`ANY_PAGE`)
until the test releases it: deterministic races without sleeps.  ``Options.step_delays``
injects a delay at a step, a perturbation for stress tests (never a synchronisation); the inline
resolver is built with the hooks only when delays are set, so it costs nothing otherwise.
Negative controls: ``wrong_source_before_lock`` chooses the source before the first barrier and
outside the gate (the stale-source race test must catch it); ``old_install_order`` restores the
ordering before issue 13 (no gate, removed mark cleared and fault booked before the ioctl).

The package, by job:

* options.py -- Options, Stats, the named steps (STEPS), page states, Barrier;
* source.py -- Source (the served contents, in a memfd) and fill_pattern;
* messages.py -- raw message words and the serve loop's log entries;
* gate.py -- the install gate (RWLock);
* serve_loop.py -- FaultServer: the serve loop and the general fault path;
* fast_path.py -- the inline resolver of MISSING and WP faults;
* placements.py -- ThreadHandler, ProcessHandler, SpawnedHandler and their control RPC;
* __main__.py -- ``python -m lib.kernel.handler FD``, the SpawnedHandler process.

This module re-exports the public API (what a case uses); tests reaching into the serve loop
import FaultServer and the message helpers from their own modules.
"""

from lib.kernel.handler.options import (
    AFTER_CHOOSE,
    AFTER_INSTALL,
    AFTER_MARK,
    AFTER_READ,
    AFTER_RELEASE,
    ANY_PAGE,
    BEFORE_LOCK,
    BEFORE_RESOLVE,
    CLEAN,
    DIRTY,
    FAULT_STEPS,
    LOOP_STEPS,
    REMOVED,
    STEPS,
    ZERO,
    Options,
    Stats,
    parked_blocks_reads,
)
from lib.kernel.handler.placements import TOPOLOGIES, ProcessHandler, SpawnedHandler, ThreadHandler
from lib.kernel.handler.source import Source

__all__ = [
    "AFTER_CHOOSE",
    "AFTER_INSTALL",
    "AFTER_MARK",
    "AFTER_READ",
    "AFTER_RELEASE",
    "ANY_PAGE",
    "BEFORE_LOCK",
    "BEFORE_RESOLVE",
    "CLEAN",
    "DIRTY",
    "FAULT_STEPS",
    "LOOP_STEPS",
    "REMOVED",
    "STEPS",
    "TOPOLOGIES",
    "ZERO",
    "Options",
    "ProcessHandler",
    "Source",
    "SpawnedHandler",
    "Stats",
    "ThreadHandler",
    "parked_blocks_reads",
]
