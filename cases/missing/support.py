"""The MISSING area's test context, after uffd-unit-tests' uffd-common (Linux selftests/mm).

* :class:`Area`: the registered area ``dst`` of one memory type (plus its MAP_SHARED alias for
  shmem/hugetlb), a private-anon ``src`` holding the content the handlers serve, and the
  per-page counters (a pthread mutex at page offset 0, an 8-byte counter right after it: the
  uffd-common layout) with ``count_verify``.  The source lives in private anon memory for every
  type (UFFDIO_COPY reads any user memory), so a hugetlb case uses its pool for ``dst`` only.
* :class:`PollThread`: uffd-common's poll thread (poll the uffd and a stop pipe, dispatch
  page faults to a handler function) for cases whose faulting thread touches memory only through
  lib.kernel.libc (docs/ARCHITECTURE.md rule 1).  A handler exception is recorded and the area is unregistered, which
  wakes the faulting thread, so a broken handler fails the case instead of hanging it.
* :func:`default_handler`: uffd-common's generic fault handler (missing: refuse a WRITE fault,
  UFFDIO_COPY from src, EEXIST -> wake; wp: unprotect; minor: invert the page through the
  unregistered mapping, CONTINUE, and require a second CONTINUE to fail with EEXIST).
* :class:`SigbusCatcher`: a SIGBUS handler installed with rt_sigaction(2) (lib.kernel.libc).  Python's
  signal module cannot catch a synchronous SIGBUS raised inside a C call (its C handler only sets
  a flag and returns, so the access faults again); this one runs a Python callback on the
  faulting thread, which must make the access succeed when it returns (resolve the page with an
  ioctl, or map a fresh page over it).  uffd-unit-tests longjmps instead; the observable (which
  page signalled, how often) is the same.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from lib.kernel import abi, libc, memory, system
from lib.kernel.memtypes import HUGETLB_PRIVATE, MemType
from lib.kernel.uffd import Msg, UffdError, Userfaultfd

COUNT_OFF = 40  # area_count(): the counter right after the mutex (sizeof(pthread_mutex_t) on x86_64 glibc)
UUT_MEM = 32 * system.MiB  # uffd-unit-tests' UFFD_TEST_MEM_SIZE
BASE_PAGES = 128  # base-page areas: 512 KiB instead of 32 MiB (Python touches every page)


def area_pages(mt: MemType) -> int:
    """uffd-unit-tests' nr_pages, bounded by the hugetlb pool the suite grows for the type."""
    if not mt.hugetlb:
        return BASE_PAGES
    return min(max(UUT_MEM, 2 * mt.size) // mt.size, mt.max_pages)


def need_type(mt: MemType, features: int = 0, npages: int | None = None) -> None:
    """Skip unless the type, its hugetlb size and pool, and the uffd features are available."""
    n = 1
    if mt.hugetlb:
        n = npages if npages is not None else area_pages(mt)
        if n > mt.max_pages:
            pytest.skip(f"needs {n} hugetlb pages of {system.size_label(mt.size)}, "
                        f"the suite's pool for that size holds {mt.max_pages}")
    mt.require(int(features) | mt.missing_feature, pages=n)


def features_for(mt: MemType, *extra: int) -> int:
    f = mt.missing_feature
    for e in extra:
        f |= int(e)
    return f


# ---------------------------------------------------------------------------------------
# the area


@dataclass
class Area:
    mt: MemType
    npages: int
    dst: memory.Region
    src: memory.Region
    dst_alias: memory.Region | None = None
    count_verify: list[int] = field(default_factory=list)

    @property
    def page_size(self) -> int:
        return self.dst.page_size

    @property
    def size(self) -> int:
        return self.npages * self.page_size

    def page(self, nr: int, base: int | None = None) -> int:
        return (self.dst.addr if base is None else base) + nr * self.page_size

    def count_addr(self, nr: int, base: int | None = None) -> int:
        return self.page(nr, base) + COUNT_OFF

    def src_page(self, nr: int) -> int:
        return self.src.addr + nr * self.page_size

    def release(self, addr: int | None = None) -> None:
        """uffd-common's release_pages: DONTNEED for anon and hugetlb-private, REMOVE otherwise
        (shmem-private is MAP_SHARED)."""
        advice = self.mt.discard_advice
        libc.madvise(self.dst.addr if addr is None else addr, self.size, advice)

    def close(self) -> None:
        for r in (self.dst_alias, self.dst, self.src):
            if r is not None:
                r.close()

    def __enter__(self) -> Area:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_count(addr: int) -> int:
    return int.from_bytes(libc.read(addr, 8), "little")


def write_count(addr: int, value: int) -> None:
    libc.write(addr, value.to_bytes(8, "little"))


def map_dst(mt: MemType, npages: int, align: int = 0) -> memory.Region:
    """The registered area of a type; ``align`` places it at an aligned address (mremap target,
    MADV_COLLAPSE).  Hugetlb mappings are aligned to their page size by the kernel, and mapped
    MAP_NORESERVE as uffd-common does: a private mapping's reservation would belong to this
    process alone, and a forked child (events) could not fault pages in."""
    return mt.map(npages, noreserve=mt.hugetlb, align=0 if mt.hugetlb else align)


def _aligned_fixed(size: int, align: int, flags: int, fd: int) -> int:
    hole = memory.aligned_anon(size, align)
    return libc.mmap(size, memory.PROT_RW, flags | abi.MAP_FIXED, fd, 0, addr=hole.addr)


def alias_of(r: memory.Region, align: int = 0) -> memory.Region:
    """A second MAP_SHARED mapping of the file behind ``r`` (uffd-common's area_*_alias)."""
    if not align:
        return r.alias()
    addr = _aligned_fixed(r.size, align, abi.MAP_SHARED, r.fd)
    return memory.Region(addr, r.size, r.page_size, r.kind + "-alias", -1, True, r.hugetlb, [(addr, r.size)])


def make_area(mt: MemType, npages: int | None = None, counters: bool = True, align: int = 0,
              alias: bool = True) -> Area:
    """dst of the type (nothing populated), src in private anon memory with the counters."""
    n = area_pages(mt) if npages is None else npages
    dst = map_dst(mt, n, align)
    src = memory.aligned_anon(n * mt.page_size, mt.page_size if mt.hugetlb else memory.PAGE_SIZE)
    a = Area(mt, n, dst, src)
    if alias and mt.kind != HUGETLB_PRIVATE and dst.fd >= 0:
        a.dst_alias = alias_of(dst)
    if mt.hugetlb:
        # A hugetlb UFFDIO_COPY whose source is not mapped falls back to a temporary huge
        # page from the pool (mfill_atomic_hugetlb, -ENOENT path); with every pool page
        # reserved by dst that is ENOMEM.  Populate src first (THP zero pages where possible).
        try:
            libc.madvise(src.addr, src.size, abi.Madv.HUGEPAGE)
        except OSError:
            pass
    if counters:
        for nr in range(n):
            write_count(a.src_page(nr) + COUNT_OFF, 1)
            a.count_verify.append(1)
    if mt.hugetlb:
        libc.madvise(src.addr, src.size, abi.Madv.POPULATE_READ)
    return a


# ---------------------------------------------------------------------------------------
# zero checks without a buffer the size of the area

_zero_maps: dict[int, int] = {}


def zero_source(length: int) -> int:
    """A never-written private anon mapping: reads as zeros (the shared zero page).

    Populated (zero pages mapped) so that a hugetlb UFFDIO_COPY from it needs no temporary
    huge page from the pool (see make_area)."""
    if length not in _zero_maps:
        z = memory.aligned_anon(length, min(length, 2 * system.MiB))
        libc.mprotect(z.addr, length, abi.PROT_READ)
        try:
            libc.madvise(z.addr, length, abi.Madv.HUGEPAGE)
        except OSError:
            pass
        libc.madvise(z.addr, length, abi.Madv.POPULATE_READ)
        _zero_maps[length] = z.addr
    return _zero_maps[length]


def is_zero(addr: int, length: int) -> bool:
    """User-mode read of [addr, addr+length) compared with zeros (lib.kernel.libc.is_uniform)."""
    return libc.is_uniform(addr, 0, length)


_INVERT = bytes(255 - i for i in range(256))
CHUNK = 1 << 20


def invert(addr: int, length: int) -> None:
    """Bit-invert memory in 1 MiB chunks (uffd-common's minor handler does it per byte)."""
    for off in range(0, length, CHUNK):
        n = min(CHUNK, length - off)
        libc.write(addr + off, libc.read(addr + off, n).translate(_INVERT))


def filled(addr: int, byte: int, length: int) -> bool:
    """Every byte of [addr, addr+length) equals ``byte`` (user-mode reads; lib.kernel.libc.is_uniform)."""
    return libc.is_uniform(addr, byte, length)


# ---------------------------------------------------------------------------------------
# the poll thread and the generic handler


@dataclass
class FaultStats:
    missing: int = 0
    wp: int = 0
    minor: int = 0
    errors: list[str] = field(default_factory=list)
    msgs: list[Msg] = field(default_factory=list)


class PollThread:
    """Poll the uffd and a stop pipe; hand every message to ``on_msg`` (uffd_poll_thread)."""

    def __init__(self, uffd: Userfaultfd, on_msg: Callable[[Msg], None], wake_range: tuple[int, int] | None = None,
                 stats: FaultStats | None = None) -> None:
        self.uffd = uffd
        self.on_msg = on_msg
        self.wake_range = wake_range
        self.stats = stats or FaultStats()
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._t = threading.Thread(target=self._run, name="uffd-poll", daemon=True)

    def start(self) -> PollThread:
        self._t.start()
        return self

    def stop(self, timeout: float = 10.0) -> FaultStats:
        os.write(self._w, b"x")
        self._t.join(timeout)
        if self._t.is_alive():
            self.stats.errors.append("poll thread did not stop")
        os.close(self._r)
        os.close(self._w)
        return self.stats

    def __enter__(self) -> PollThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._t.is_alive():
            self.stop()

    def _run(self) -> None:
        p = select.poll()
        p.register(self.uffd.fd, select.POLLIN)
        p.register(self._r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in p.poll(1000)}
            if self._r in ready:
                return
            if self.uffd.fd not in ready:
                continue
            for m in self.uffd.read_msgs(16):
                self.stats.msgs.append(m)
                try:
                    self.on_msg(m)
                except Exception as e:
                    self.stats.errors.append(f"{m}: {type(e).__name__}: {e}")
                    if self.wake_range:  # let the faulting thread go on (and fail its checks)
                        try:
                            self.uffd.unregister(*self.wake_range)
                        except OSError as e2:
                            self.stats.errors.append(f"unregister after error: {e2}")


def copy_page(u: Userfaultfd, dst: int, src: int, page_size: int, wp: bool = False) -> bool:
    """uffd-common's __copy_page: COPY one page; EEXIST wakes instead.  True if it copied."""
    try:
        n = u.copy(dst, src, page_size, abi.CopyMode.WP if wp else 0)
    except UffdError as e:
        if e.errno == errno.EEXIST:
            u.wake(dst, page_size)
            return False
        raise
    if n != page_size:
        raise AssertionError(f"UFFDIO_COPY copied {n} of {page_size} bytes")
    return True


def default_handler(a: Area, u: Userfaultfd, stats: FaultStats, apply_wp: bool = False,
                    registered: memory.Region | None = None) -> Callable[[Msg], None]:
    """uffd-common's uffd_handle_page_fault for faults on ``registered`` (default: dst).

    The minor branch inverts the page through ``a.dst`` (the unregistered side, the alias being
    registered) before UFFDIO_CONTINUE, and a repeated CONTINUE must fail with -EEXIST.
    """
    reg = registered or a.dst
    ps = a.page_size

    def handle(m: Msg) -> None:
        if m.event != abi.Event.PAGEFAULT:
            raise AssertionError(f"unexpected event {m}")
        addr = m.address & ~(ps - 1)
        nr = (addr - reg.addr) // ps
        if m.is_wp:
            u.writeprotect(addr, ps, False)
            stats.wp += 1
        elif m.is_minor:
            invert(a.page(nr), ps)
            u.cont(addr, ps, abi.ContinueMode.WP if apply_wp else 0)
            try:
                u.cont(addr, ps, 0)
            except UffdError as e:
                if e.errno != errno.EEXIST or e.result != -errno.EEXIST:
                    raise AssertionError(f"repeated UFFDIO_CONTINUE: expected -EEXIST, got {e}") from None
            else:
                raise AssertionError("repeated UFFDIO_CONTINUE succeeded")
            stats.minor += 1
        else:
            if m.is_write:
                raise AssertionError(f"unexpected write fault at {m.address:#x} (a MISSING fault must be a read)")
            copy_page(u, addr, a.src_page(nr), ps, apply_wp)
            stats.missing += 1

    return handle


# ---------------------------------------------------------------------------------------
# SIGBUS


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
MAX_REPEATS = 3


class SigbusCatcher:
    """Catch SIGBUS in this process; ``on_sigbus(addr)`` must make the access succeed.

    Each signal is recorded as (page address, si_code).  If the same page signals more than
    MAX_REPEATS times in a row, the catcher maps a fresh page over it (so the case can go on
    and fail on the record) instead of looping forever.
    """

    def __init__(self, page_size: int, on_sigbus: Callable[[int], None]) -> None:
        self.page_size = page_size
        self.on_sigbus = on_sigbus
        self.hits: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self._cb = _HANDLER(self._handle)
        self._old = abi.sigaction()

    def _handle(self, sig: int, info: int, ctx: int) -> None:
        si = abi.siginfo.from_address(info)
        addr, code = si.addr, si.code
        page = addr & ~(self.page_size - 1)
        self.hits.append((page, code))
        tail = self.hits[-(MAX_REPEATS + 1):]
        if len(tail) > MAX_REPEATS and all(p == page for p, _ in tail):
            self.errors.append(f"SIGBUS repeated on page {page:#x}")
            replace_page(page, self.page_size)
            return
        try:
            self.on_sigbus(page)
        except Exception as e:
            self.errors.append(f"SIGBUS handler at {page:#x}: {type(e).__name__}: {e}")

    def __enter__(self) -> SigbusCatcher:
        sa = libc.sigaction_siginfo(ctypes.cast(self._cb, ctypes.c_void_p).value)
        libc.rt_sigaction(abi.SIGBUS, sa, self._old)
        return self

    def __exit__(self, *exc: object) -> None:
        libc.rt_sigaction(abi.SIGBUS, self._old, None)

    def pages(self) -> list[int]:
        return [p for p, _ in self.hits]


def replace_page(page: int, page_size: int) -> None:
    """Map a fresh private anon page over ``page`` (the access then reads zeros)."""
    libc.mmap(page_size, memory.PROT_RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED, addr=page)


# ---------------------------------------------------------------------------------------
# a faulting child process with a verdict


class Child:
    """A forked process running ``fn``; :meth:`finish` returns its failure text or ''."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._r, w = os.pipe2(os.O_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._r)
            code = 0
            try:
                fn()
            except BaseException as e:
                os.write(w, f"{type(e).__name__}: {e}".encode()[:4000])
                code = 1
            finally:
                os._exit(code)
        os.close(w)

    def finish(self, timeout: float = 30.0) -> str:
        from lib.kernel.tasks import reap

        try:
            r = reap(self.pid, timeout)
        finally:
            text = os.read(self._r, 4096).decode(errors="replace")
            os.close(self._r)
        if r.signal is not None or r.exit_code:
            return text or r.describe()
        return ""


def uffd_probe_features() -> int:
    from lib.kernel.uffd import probe

    return probe().features
