"""Negative controls for cases/remove: every oracle of the area is shown to fail when the
kernel or the handler misbehaves the way it is meant to catch.

The case functions run in an isolated child with a deadline (lib.runner.isolation.run_isolated), as under
run_suite.py; a control passes when the case *fails* (an assertion, or a timeout where the
broken setup leaves a thread blocked).  The race cases are run against the deliberately wrong
handler, ``Options(wrong_source_before_lock=True)``, in every placement.
"""

from __future__ import annotations

import pytest

from cases.remove import test_after, test_blocking, test_delivery, test_gated, test_multipage, test_race, test_teardown
from cases.remove.backings import Backing
from cases.remove.support import MiB, check_ranges_cover, check_zero, returns_within
from lib import check
from lib.kernel import abi, libc, memtypes
from lib.kernel.handler.messages import DISPATCHED
from lib.kernel.handler.options import Options
from lib.kernel.handler.serve_loop import FaultServer
from lib.kernel.uffd import Msg
from lib.runner import isolation
from tests.controls import hugetlb_pages, passes

ANON = Backing(memtypes.ANON)
MEMFD = Backing(memtypes.SHMEM)
HUGE = Backing(memtypes.HUGETLB_ANON, 2 * MiB, pages=8)
HUGEFS = Backing(memtypes.HUGETLB, 2 * MiB, pages=8)
TOPOLOGIES = ["thread", "process", "scm_rights"]
WRONG = {"wrong_source_before_lock": True}


def outcome(fn, timeout: float = 40) -> isolation.Outcome:
    return isolation.run_isolated(fn, timeout, skip_types=(pytest.skip.Exception,),
                                  xfail_types=(pytest.xfail.Exception,))


def fails(fn, timeout: float = 40, contains: str = "") -> isolation.Outcome:
    o = outcome(fn, timeout)
    if o.kind == "skip":
        pytest.skip(o.message)
    assert o.kind in ("fail", "timeout"), f"the oracle did not catch it: {o.kind} {o.message}"
    assert contains in o.message, f"failed for another reason: {o.message}"
    return o


@pytest.fixture(scope="module")
def hugetlb_pool():
    """2 MiB hugetlb pages for the hugetlb controls, taken under the suite's machine-wide run
    lock and journal (lib.kernel.system.SETTINGS) and put back afterwards (tests/controls.py)."""
    with hugetlb_pages(2 * MiB, 8):
        yield


# ---------------------------------------------------------------------------------------
# races: each fails on the wrong handler, in every placement; and passes on the right one


RACES = {
    "stale-source": test_race.stale_source_race,
    "madvise-while-parked": test_race.madvise_while_parked,
    "faulted-short-circuit": test_race.faulted_short_circuit,
}


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("race", list(RACES))
def test_race_fails_on_wrong_handler(race, topology):
    fails(lambda: RACES[race](ANON, topology, Options(**WRONG)))


@pytest.mark.parametrize("race", list(RACES))
def test_race_fails_on_wrong_handler_hugetlb(race, hugetlb_pool):
    fails(lambda: RACES[race](HUGE, "scm_rights", Options(**WRONG)))


@pytest.mark.parametrize("race", list(RACES))
def test_race_passes_on_right_handler(race):
    passes(lambda: RACES[race](ANON, "thread"), 40)


# ---------------------------------------------------------------------------------------
# the races' kernel oracles, against stand-ins for a kernel that zaps late, wrongly or not at all


def _no_zap(s, addr, length, advice):
    """A kernel that does not zap: no REMOVE, nothing discarded (MADV_NORMAL)."""
    libc.madvise(addr, length, abi.Madv.NORMAL)


def _late_zap(s, addr, length, advice):
    """A kernel whose madvise returns before the zap: it returns while its REMOVE is unread
    (the handler is paused, so the zap has not happened yet, deterministically)."""
    from cases.remove.support import WCHAN_EVENT, madvise_async

    s.handler.pause()
    madvise_async(addr, length, advice).wait_blocked(WCHAN_EVENT)


def _split_zap(s, addr, length, advice):
    """A kernel that delivers the range wrongly: one REMOVE per page instead of one for the call."""
    ps = s.region.page_size
    for a in range(addr, addr + length, ps):
        libc.madvise(a, ps, advice)


def _with_punch(fake, fn):
    def body():
        test_race.punch = fake  # in the isolated child only
        fn()

    return body


ZAPS = {"no-zap": (_no_zap, "expected absent"), "late-zap": (_late_zap, "expected absent")}


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("zap", list(ZAPS))
@pytest.mark.parametrize("race", list(RACES))
def test_race_pagemap_oracle_catches_a_kernel_that_does_not_zap(race, zap, topology):
    fake, contains = ZAPS[zap]
    fails(_with_punch(fake, lambda: RACES[race](ANON, topology)), contains=contains)


@pytest.mark.parametrize("race", ["stale-source", "madvise-while-parked"])
def test_race_remove_oracle_catches_a_split_range(race):
    fails(_with_punch(_split_zap, lambda: RACES[race](ANON, "thread")), contains="expected one REMOVE")


def test_race_pagemap_oracle_catches_a_kernel_that_does_not_zap_hugetlb(hugetlb_pool):
    fails(_with_punch(_no_zap, lambda: test_race.faulted_short_circuit(HUGE, "scm_rights")), contains="expected absent")


def _stats(log):
    from lib.kernel.handler.options import Stats

    return Stats(log=log, faults=[{"address": 0x2000, "flags": 0, "ptid": 7}])


GOOD = ["read PAGEFAULT@0x2008 flags=<PagefaultFlag: 0>", "dispatched PAGEFAULT@0x2008 flags=<PagefaultFlag: 0>",
        "read PAGEFAULT@0x2010 flags=<PagefaultFlag: 0>", "read REMOVE [0x1000, 0x3000)",
        "applied REMOVE [0x1000, 0x3000)", "read PAGEFAULT@0x1000 flags=<PagefaultFlag: 0>"]


def test_delivery_oracles_accept_the_kernel_order():
    from cases.remove import support

    st = _stats(GOOD)
    assert support.check_one_remove(st, 0x1000, 0x3000, "x") == 2
    support.check_faults_before(st, 0x2000, 0x1000, 2, "x")
    support.check_no_fault_after(st, 0x2000, 0x1000, 3, "x")


@pytest.mark.parametrize("log,oracle,contains", [
    (GOOD[:3], "remove", "expected one REMOVE"),  # no REMOVE delivered
    ([*GOOD, "read REMOVE [0x1000, 0x3000)"], "remove", "expected one REMOVE"),  # two
    ([GOOD[0], "read REMOVE [0x1000, 0x2000)"], "remove", "expected one REMOVE"),  # another range
    (GOOD[3:], "before", "at least 2"),  # the faults were not delivered before it
    ([GOOD[0], *GOOD[3:]], "before", "at least 2"),  # one of two
    ([*GOOD, "read PAGEFAULT@0x2fff flags=<PagefaultFlag: 0>"], "after", "after the handler filled"),
], ids=["no-remove", "two-removes", "wrong-range", "no-fault-before", "one-fault-before", "fault-after-fill"])
def test_delivery_oracles_catch(log, oracle, contains):
    from cases.remove import support

    st = _stats(log)
    with pytest.raises(AssertionError, match=contains) as e:
        if oracle == "remove":
            support.check_one_remove(st, 0x1000, 0x3000, "x")
        elif oracle == "before":
            support.check_faults_before(st, 0x2000, 0x1000, 2, "x")
        else:
            support.check_no_fault_after(st, 0x2000, 0x1000, 3, "x")
    assert "fault records: 0x2000" in str(e.value), "the failure names the fault records"


def test_stale_source_reads_the_sentinel():
    o = fails(lambda: test_race.stale_source_race(ANON, "thread", Options(**WRONG)))
    assert "stale source" in o.message or "expected zeros" in o.message


def test_liveness_oracle_catches_a_blocked_madvise():
    """returns_within: a madvise whose REMOVE nobody reads does not return in 2 s."""

    def body():
        from lib.kernel.uffd import open_for

        r = ANON.map(1)
        u = open_for(int(abi.Feature.EVENT_REMOVE))
        u.register(r.addr, r.size, abi.RegisterMode.MISSING)
        try:
            returns_within(lambda: libc.madvise(r.addr, r.size, abi.Madv.DONTNEED), 0.5, "madvise")
        finally:
            u.close()

    fails(body, contains="did not return within")


# ---------------------------------------------------------------------------------------
# delivery


@pytest.mark.parametrize(
    "ranges",
    [[], [(0, 0x1000)], [(0x1000, 0x2000)], [(0x1000, 0x3000), (0x2000, 0x4000)], [(0x1000, 0x2000), (0x3000, 0x4000)],
     [(0x1000, 0x5000)]],
    ids=["none", "before", "short", "overlap", "gap", "beyond"])
def test_ranges_oracle(ranges):
    with pytest.raises(AssertionError):
        check_ranges_cover(ranges, 0x1000, 0x4000, "ranges")


def test_ranges_oracle_accepts_a_split():
    check_ranges_cover([(0x2000, 0x4000), (0x1000, 0x2000)], 0x1000, 0x4000, "ranges")


def test_refused_oracle_catches_a_shared_mapping():
    fails(lambda: test_delivery.madv_remove_refused(MEMFD), contains="errno")


def test_unregister_oracle_catches_a_registered_range():
    fails(lambda: test_delivery.none_after_unregister(ANON, unregister=False), contains="UNREGISTER")


def test_reregister_oracle_catches_a_missing_event():
    fails(lambda: test_delivery.again_after_wp_reregister(ANON, reregister=False), contains="no message")


def test_feature_oracle_catches_an_event():
    fails(lambda: test_delivery.none_without_feature(ANON, int(abi.Feature.EVENT_REMOVE)), contains="without")


def test_rounding_oracle_catches_a_whole_range(hugetlb_pool):
    fails(lambda: test_delivery.hugetlb_dontneed_rounds_end_down(HUGE, halves=4), contains="REMOVE ranges")


def test_unaligned_start_oracle_catches_success(hugetlb_pool):
    fails(lambda: test_delivery.hugetlb_dontneed_unaligned_start(HUGE, offset=0), contains="errno")


def test_punch_hole_oracle_catches_madv_remove():
    fails(lambda: test_delivery.punch_hole_unnoticed(MEMFD, via_madvise=True), contains="source again")


def test_no_remove_oracle():
    with pytest.raises(AssertionError, match="REMOVE sent"):
        test_delivery.check_no_remove([{"event": "REMOVE", "start": 0, "end": 4096}], "x")


# ---------------------------------------------------------------------------------------
# blocking


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_blocking_oracle_catches_an_unblocked_madvise(topology):
    """Handler not paused: the madvise is never seen in D, or (a remote handler may take a
    moment to read) is seen but then the page is already gone or the caller no longer waits:
    whichever check meets it first reports it."""
    fails(lambda: test_blocking.madvise_blocks_until_read(ANON, topology, pause=False))


def test_eagain_oracle_catches_a_successful_copy():
    fails(lambda: test_blocking.copy_eagain_while_unread(ANON, read_first=True), contains="UFFDIO_COPY errno")


@pytest.mark.parametrize("topology", ["thread", "process"])
def test_retry_oracle_catches_a_loop_that_does_not_read(topology):
    """The handler as it was: an inline serve loop retrying EAGAIN without reading the pending
    REMOVE spins forever (the madvise waits for a read that never comes): the case fails."""

    def body():
        FaultServer._read_pending = lambda self, u: None  # in the isolated child (and its forks)
        test_blocking.inline_handler_retries(ANON, topology)

    fails(body, contains="still blocked")


# ---------------------------------------------------------------------------------------
# after removal, multi-page


IGNORE = {"ignore_remove": True}


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_zero_fill_oracle_catches_a_handler_ignoring_remove(topology):
    fails(lambda: test_after.data_gone(ANON, topology, Options(**IGNORE)), contains="zeros")


def test_zero_fill_oracle_catches_a_handler_ignoring_remove_hugetlb(hugetlb_pool):
    fails(lambda: test_after.data_gone(HUGE, "scm_rights", Options(**IGNORE)), contains="zeros")


def test_zero_fill_oracle_catches_kept_content():
    """DONTNEED on shared memory keeps the data: the data-gone check says so."""

    def body():
        zero, _ = test_after.refault_after(Backing(memtypes.SHARED_ANON), "thread", abi.Madv.DONTNEED)
        check.true(zero, "page reads zeros after MADV_DONTNEED (the data is gone)")

    fails(body, contains="zeros")


def test_content_kept_oracle_catches_private_memory():
    fails(lambda: test_after.content_kept(ANON), contains="reads zeros")


def test_unaligned_oracle_catches_a_handler_ignoring_remove(hugetlb_pool):
    fails(lambda: test_after.unaligned_remove(HUGEFS, Options(**IGNORE)), contains="expected zeros")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_multi_page_oracle_catches_a_handler_ignoring_remove(topology):
    fails(lambda: test_multipage.multi_page(ANON, topology, Options(**IGNORE)), contains="expected zeros")


def test_zero_oracle():
    buf = libc.mmap(8192)
    libc.write(buf + 8191, b"\x01")
    with pytest.raises(AssertionError):
        check_zero(buf, 8192, "buf")
    check_zero(buf, 8191, "buf")
    libc.munmap(buf, 8192)


# ---------------------------------------------------------------------------------------
# gated ordering: a handler that serves the batch's faults before applying its REMOVEs


def _faults_first(self, u, words):
    msgs = [Msg._from_words(*w) for w in words]  # FaultServer._batch is given raw message words
    if msgs:
        self._log("read " + ", ".join(str(m) for m in msgs))
    for w, m in zip(words, msgs):
        if m.event == abi.Event.PAGEFAULT:
            self._log((DISPATCHED, w))
            self._resolve(u, m)
    for m in msgs:
        if m.event == abi.Event.REMOVE:
            self._apply_remove(m)
            self._log(f"applied {m}")


def _with_faults_first(fn):
    def body():
        FaultServer._batch = _faults_first  # in the isolated child only (and its forks)
        fn()

    return body


@pytest.mark.parametrize("topology", ["thread", "process"])
def test_order_oracle_catches_faults_first(topology):
    fails(_with_faults_first(lambda: test_gated.remove_then_fault(ANON, topology)))


@pytest.mark.parametrize("topology", ["thread", "process"])
def test_batch_order_oracle_catches_faults_first(topology):
    fails(_with_faults_first(lambda: test_gated.write_then_remove(ANON, topology)), contains="applied before")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_remove_then_fault_catches_a_handler_ignoring_remove(topology):
    fails(lambda: test_gated.remove_then_fault(ANON, topology, Options(**IGNORE)), contains="zeros")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_remove_then_write_catches_a_handler_ignoring_remove(topology):
    fails(lambda: test_gated.remove_then_write(ANON, topology, Options(**IGNORE)), contains="went with the page")


def test_batch_order_oracle_on_logs():
    f, r = 0x1000, (0x2000, 0x3000)
    good = ["read PAGEFAULT@0x1000 flags=0, REMOVE [0x2000, 0x3000)", "applied REMOVE [0x2000, 0x3000)",
            "dispatched PAGEFAULT@0x1000 flags=0"]
    test_gated.check_batch_order(good, f, r)
    for bad in (
        [good[0], good[2], good[1]],  # fault dispatched first
        ["read PAGEFAULT@0x1000 flags=0", good[2], "read REMOVE [0x2000, 0x3000)", good[1]],  # two reads
        ["read REMOVE [0x2000, 0x3000), PAGEFAULT@0x1000 flags=0", good[1], good[2]],  # event first
    ):
        with pytest.raises(AssertionError):
            test_gated.check_batch_order(bad, f, r)


# ---------------------------------------------------------------------------------------
# teardown


def test_close_oracle_catches_a_second_reference():
    fails(lambda: test_teardown.close_releases_madvise(ANON, keep_dup=True), contains="still blocked")


@pytest.mark.parametrize("topology", ["process", "scm_rights"])
def test_death_oracle_catches_a_surviving_reference(topology):
    fails(lambda: test_teardown.handler_death(ANON, topology, keep_ref=True), contains="still blocked")


def test_unmap_oracle_catches_a_missing_event():
    def body():
        got, unmapped = test_teardown.unmap_event(ANON, False)
        check.eq(got, [unmapped], "UNMAP ranges")

    fails(body, contains="UNMAP ranges")


def test_no_unmap_oracle_catches_an_event():
    def body():
        got, _ = test_teardown.unmap_event(ANON, True)
        check.eq(got, [], "UNMAP ranges without the feature")

    fails(body, contains="without the feature")


def test_removes_oracle_catches_another_event():
    from lib.kernel.uffd import Msg

    with pytest.raises(AssertionError, match="other than REMOVE"):
        test_delivery.removes([Msg(abi.Event.REMOVE, start=0, end=4096), Msg(abi.Event.UNMAP, start=0, end=4096)])


# ---------------------------------------------------------------------------------------
# hugetlb mapping: skip only on an insufficient pool (probed apart), fail otherwise


def test_hugetlb_map_failure_with_a_pool_is_a_failure(hugetlb_pool):
    """An mmap that fails although the pool has the pages is a failure, not a skip."""
    import errno

    def body():
        def refuse(*a, **kw):
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

        libc.mmap = refuse  # in the isolated child only
        HUGE.map(1)

    o = outcome(body)
    assert o.kind == "fail" and "although the pool had" in o.message, f"{o.kind}: {o.message}"


def test_hugetlb_map_skips_on_an_insufficient_pool(hugetlb_pool):
    def body():
        memtypes.hugetlb_pool.available = lambda size: 0  # the probe says: empty pool (isolated child)
        HUGE.map(1)

    o = outcome(body)
    assert o.kind == "skip" and "0 available (the pool could not be grown)" in o.message, f"{o.kind}: {o.message}"
