"""No placement of lib.kernel.handler serves stale data after a REMOVE, whatever step it is held at.

The handler's step hooks (lib.kernel.handler.STEPS) park the thread serving a page at a named step
(a barrier: deterministic) or stall it there (``Options.step_delays``: a perturbation).  Two
REMOVE races run against every placement (thread, forked process, SCM_RIGHTS process), with the
serve loop resolving (``workers=0``) and with two workers, held at every step:

* ``in_flight``: a read fault on an unpopulated page is held; madvise(MADV_DONTNEED) of the
  page is issued.  Whether madvise can return while the fault is held depends on the step
  (lib.kernel.handler.parked_blocks_reads: inside the install gate the serve loop cannot read the
  REMOVE), and the test waits for exactly that state: madvise returned, or madvise asleep at
  userfaultfd_event_wait_completion.  Once madvise has returned, the page must read zero.
* ``refault``: a populated page is removed (madvise returned), then faulted by two readers
  while the first fault is held.  Both readers started after madvise returned, so both must
  read zeros; the second is either served while the first is held (the step leaves the serve
  loop free: the test waits for its result) or provably blocked in handle_userfault.

While a fault is held, the handler's book-keeping must not claim a page the kernel does not
have: a page booked clean/dirty/zero is present in /proc/self/pagemap.

The kernel facts (fs/userfaultfd.c, mm/madvise.c): madvise sleeps until the REMOVE is read and
zaps afterwards; UFFDIO_COPY fails with EAGAIN while the REMOVE is unread and succeeds again
after the zap, so a source chosen before the read and installed after the zap survives
madvise: stale data.  Negative controls at the end: ``Options(old_install_order=True)`` (the
ordering before issue 13: no install gate, the removed mark cleared and the fault booked before
the ioctl) and ``wrong_source_before_lock`` are caught, deterministically, at the steps where
their windows are.
"""

from __future__ import annotations

import pytest

from cases.remove.support import (
    HEAD,
    PAGE,
    WCHAN_EVENT,
    WCHAN_FAULT,
    check_zero,
    header,
    madvise_async,
    make_source,
    read_async,
)
from lib.kernel import abi, libc, memory, tasks
from lib.kernel.handler.options import (
    AFTER_CHOOSE,
    AFTER_MARK,
    AFTER_RELEASE,
    ANY_PAGE,
    BEFORE_LOCK,
    CLEAN,
    DIRTY,
    LOOP_STEPS,
    REMOVED,
    STEPS,
    ZERO,
    Options,
    parked_blocks_reads,
)
from lib.kernel.pagemap import Pagemap
from lib.kernel.serve import flush, served
from lib.runner import isolation

PLACEMENTS = ["thread", "process", "scm_rights"]
EVENT_REMOVE = int(abi.Feature.EVENT_REMOVE)
DONTNEED = abi.Madv.DONTNEED
DELAY = 0.02  # seconds injected at a step in the perturbation runs


def present(addr: int) -> bool:
    with Pagemap() as pm:
        return pm.entry(addr).present


def check_booking(h, addr: int) -> None:
    """A page the handler books as installed is one the kernel maps."""
    state = h.stats().states.get(0)
    if state in (CLEAN, DIRTY, ZERO) and not present(addr):
        raise AssertionError(f"page booked {state!r} while the kernel has it absent (pagemap)")


def done_or_blocked(a, wchan: str) -> bool:
    """Wait until the thread returned (True) or sleeps in ``wchan`` (False)."""

    def state() -> str | None:
        if a.done():
            return "done"
        st, w = tasks.task_state(a.tid), tasks.task_wchan(a.tid)
        return "blocked" if st in "DS" and w == wchan else None

    return tasks.wait_until(state, 5, f"{a.name} to return or block in {wchan}") == "done"


def read_held(h, options: Options, step: str) -> None:
    """A worker held in the install gate: the serve loop is seen waiting for it before it may
    read the pending message (so the madvise or fault behind it stays unserved until the
    release, not by chance).  Otherwise the serve loop is the thread held."""
    if options.workers and step not in LOOP_STEPS:
        tasks.wait_until(h.read_blocked, 5, "the serve loop to wait for the install gate")


def not_stale(got: bytes, what: str) -> None:
    if got != bytes(len(got)):
        kind = "the pre-REMOVE source page" if got == header(0)[:len(got)] else "non-zero data"
        raise AssertionError(f"stale: {what} read {kind} after madvise returned ({got[:16].hex()})")


def _hooks(options: Options, step: str) -> Options:
    """Loop-step barriers on a workerless loop need its hooks on (a zero delay)."""
    if step in LOOP_STEPS and not options.workers:
        options.step_delays = {step: 0.0}
    return options


def in_flight(placement: str, options: Options, step: str | None, booking: bool = True) -> None:
    """A fault in flight, held at ``step`` (None: no barrier, only the options' delays), meets a
    REMOVE of its page; after madvise returned the page reads zero."""
    region = memory.anon(PAGE)
    src = make_source(region)
    addr = region.addr
    with served(region, placement, EVENT_REMOVE, source=src, options=options) as s:
        h = s.handler
        if step is None:
            r1 = read_async(addr, HEAD)
            mad = madvise_async(addr, PAGE, DONTNEED)
            mad.join(10)
            r1.join(10)
        elif step == AFTER_MARK and not options.workers:
            # without workers this step is reached only by the read of a REMOVE
            tok = h.install_barrier(ANY_PAGE, step)
            r1 = read_async(addr, HEAD)
            r1.join(10)
            mad = madvise_async(addr, PAGE, DONTNEED)
            h.wait_held(tok, 5)
            mad.join(10)  # released by the read, before the serve loop was held
            h.release(tok)
        else:
            tok = h.install_barrier(ANY_PAGE if step in LOOP_STEPS else 0, step)
            r1 = read_async(addr, HEAD)
            h.wait_held(tok, 5)
            if booking:
                check_booking(h, addr)
            mad = madvise_async(addr, PAGE, DONTNEED)
            if parked_blocks_reads(step, options):
                mad.wait_blocked(WCHAN_EVENT)
                read_held(h, options, step)
                h.release(tok)
                mad.join(10)
            else:
                mad.join(10)
                h.release(tok)
            r1.join(10)
        not_stale(libc.read(addr, HEAD), "the page")
        check_zero(addr, PAGE, "the page after the race")
        flush(h)
        st = s.stats()
    assert st.errors == [], st.errors


def refault(placement: str, options: Options, step: str | None, booking: bool = True) -> None:
    """A removed page faulted by two readers while the first fault is held at ``step``."""
    region = memory.anon(PAGE)
    src = make_source(region)
    addr = region.addr
    with served(region, placement, EVENT_REMOVE, source=src, options=options) as s:
        h = s.handler
        assert libc.read(addr, HEAD) == header(0), "populated from the source"
        libc.madvise(addr, PAGE, DONTNEED)
        flush(h)
        assert s.stats().states.get(0) == REMOVED and not present(addr)
        if step is None or (step == AFTER_MARK and not options.workers):
            r1, r2 = read_async(addr, HEAD), read_async(addr, HEAD)
            got1, got2 = r1.join(10), r2.join(10)
        else:
            tok = h.install_barrier(ANY_PAGE if step in LOOP_STEPS else 0, step)
            r1 = read_async(addr, HEAD)
            h.wait_held(tok, 5)
            if booking:
                check_booking(h, addr)
            r2 = read_async(addr, HEAD)
            if parked_blocks_reads(step, options):
                # the serve loop cannot read the second fault: it blocks, unless the held
                # install already put the page in place (after_install and later)
                got2 = r2.join(0) if done_or_blocked(r2, WCHAN_FAULT) else None
                if got2 is None:
                    read_held(h, options, step)
            else:
                got2 = r2.join(10)
                not_stale(got2, "the second reader (while the first fault was held)")
            h.release(tok)
            got1 = r1.join(10)
            got2 = r2.join(10) if got2 is None else got2
        not_stale(got1, "the first reader")
        not_stale(got2, "the second reader")
        check_zero(addr, PAGE, "the page after the race")
        flush(h)
        st = s.stats()
    assert st.errors == [], st.errors


SCENARIOS = {"in_flight": in_flight, "refault": refault}


def run(fn) -> isolation.Outcome:
    return isolation.run_isolated(fn, 40)


def passes(fn) -> None:
    o = run(fn)
    assert o.kind == "pass", f"{o.kind}: {o.message}\n{o.details}"


def fails(fn, contains: str) -> isolation.Outcome:
    o = run(fn)
    assert o.kind == "fail", f"the race test did not catch it: {o.kind} {o.message}"
    assert contains in o.message, f"failed for another reason: {o.message}"
    return o


def _cells():
    for workers in (0, 2):
        for step in STEPS:
            if step == AFTER_RELEASE and not workers:
                continue  # no gate to release without workers
            yield pytest.param(workers, step, id=f"{step}-{'workers' if workers else 'loop'}")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("workers,step", list(_cells()))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_no_stale_data_when_held_at_a_step(placement, workers, step, scenario):
    passes(lambda: SCENARIOS[scenario](placement, _hooks(Options(workers=workers), step), step))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("workers", [0, 2], ids=["loop", "workers"])
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_no_stale_data_when_delayed_at_a_step(placement, step, workers, scenario):
    """No barrier: a delay at ``step`` (the inline resolver's hooks when workers=0)."""
    passes(lambda: SCENARIOS[scenario](placement, Options(workers=workers, step_delays={step: DELAY}), None))


# ---------------------------------------------------------------------------------------
# negative controls: the race test catches the orderings it exists to rule out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_old_install_order_serves_stale_data(placement, scenario):
    """Held after its choice, the pre-issue-13 handler installs the source chosen before the
    REMOVE (in_flight) or serves the source to a second fault once the first cleared the mark
    (refault, the flake of issue 13)."""
    opts = Options(workers=2, old_install_order=True)
    fails(lambda: SCENARIOS[scenario](placement, opts, AFTER_CHOOSE, booking=False), "stale")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_old_install_order_books_before_the_kernel_has_the_page(placement):
    opts = Options(workers=2, old_install_order=True)
    fails(lambda: in_flight(placement, opts, AFTER_CHOOSE), "while the kernel has it absent")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_source_chosen_before_the_gate_is_stale(placement):
    opts = Options(workers=2, wrong_source_before_lock=True)
    fails(lambda: in_flight(placement, opts, BEFORE_LOCK), "stale")


def _gateless(fn):
    def body():
        from lib.kernel.handler.serve_loop import FaultServer

        init = FaultServer.__init__

        def no_gate(self, *a, **kw):
            init(self, *a, **kw)
            self._gated = False  # the mutation: choose and install outside any gate

        FaultServer.__init__ = no_gate  # in the isolated child (and a forked handler) only
        fn()

    return body


@pytest.mark.parametrize("placement", ["thread", "process"])  # a spawned handler imports afresh
def test_a_handler_without_the_install_gate_is_caught(placement):
    """With the removed marks kept and the booking after the install, but no gate, a source
    chosen while the REMOVE is read can still land after the zap; the test sees the serve loop
    read while the install is held."""
    o = run(_gateless(lambda: in_flight(placement, Options(workers=2), AFTER_CHOOSE)))
    assert o.kind == "fail", f"not caught: {o.kind} {o.message}"
    assert "instead of blocking" in o.message or "wait for the install gate" in o.message, o.message
