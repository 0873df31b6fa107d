"""The fault path's fast lane: the serve loop's resolver of MISSING and WP faults, built once per
uffd when no worker thread, barrier or negative control needs the general path
(lib/kernel/handler/serve_loop.py FaultServer._resolve and _settle_missing).

bench/fault_service.py measures it against a C handler doing the same job;
tests/test_handler_fast_path.py keeps it equal to the general path (ioctls, statistics, log, steps).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Protocol

from lib.kernel.handler.messages import DISPATCHED, PF_WP, PF_WRITE, Resolver, Words
from lib.kernel.handler.options import (
    AFTER_CHOOSE,
    AFTER_INSTALL,
    BEFORE_LOCK,
    BEFORE_RESOLVE,
    CLEAN,
    DIRTY,
    ZERO,
    Options,
    Stats,
)
from lib.kernel.uffd import Msg, UffdError, Userfaultfd


class FaultServer(Protocol):
    """What the fast lane uses of lib/kernel/handler/serve_loop.py FaultServer (which imports
    this module, so it is described here rather than imported)."""

    base: int
    page_size: int
    source: int
    opt: Options
    stats: Stats
    removed: set[int]
    state_lock: threading.Lock
    _inline: bool
    _stepping: bool
    _use_zeropage: bool
    _zeros: int
    _copy_mode: dict[bool, int]

    def _step(self, point: str, page: int) -> None: ...
    def _fault_error(self, address: int, e: Exception) -> None: ...
    def _read_pending(self, u: Userfaultfd) -> None: ...
    def _settle_missing(self, u: Userfaultfd, m: Msg, addr: int, page: int,
                        early: tuple[int, str] | None) -> None: ...


def inline_resolver(server: FaultServer, u: Userfaultfd) -> Resolver | None:
    """The serve loop's resolver of MISSING and WP faults on ``u``, or None when the options
    need the general path (workers, negative controls).  It follows the general path's (:meth:`FaultServer._resolve`)
    steps for the common case, made cheap: the options are looked at once, here; no gate
    (REMOVEs are marked by this same thread, so none lands between the source choice and
    the install); the statistics lock is held across the install ioctl and its booking, as
    on the general path when the serve loop resolves.  Failures are handled as there:
    EEXIST wakes, EAGAIN reads the pending event and retries (by _settle_missing), anything
    else is recorded.  With ``step_delays`` the ioctls are wrapped with the step hooks
    here, once; without, the closure calls the bare ioctls.  tests/test_handler_fast_path.py
    holds the two paths to the same ioctls, statistics, log and steps."""
    if not server._inline:
        return None
    ps = server.page_size
    stats = server.stats
    states, removed, log_append = stats.states, server.removed, stats.log.append
    zero_all = server.opt.zero or not server.source
    source, zeros = server.source, server._zeros
    mode_write, mode_read = server._copy_mode[True], server._copy_mode[False]
    zeropage = u.zeropage if server._use_zeropage else None
    copy, unprotect, wake = u.copy, u.writeprotect, u.wake
    lock = server.state_lock
    if server._stepping:
        copy, unprotect = stepped(server, copy), stepped(server, unprotect)
        zeropage = stepped(server, zeropage) if zeropage else None

    mask = -ps

    def resolve(w: Words) -> None:
        log_append((DISPATCHED, w))
        flags = w[1]
        addr = w[2] & mask
        page = (addr - server.base) // ps
        failure: Exception
        if flags & PF_WP:  # a write to a write-protected page: lift the protection
            with lock:
                try:
                    unprotect(addr, ps, False)
                    states[page] = DIRTY
                    stats.wp += 1
                    return
                except Exception as e:
                    failure = e
            server._fault_error(w[2], failure)
            return
        if flags & PF_WRITE:
            state, mode = DIRTY, mode_write
        else:
            state, mode = CLEAN, mode_read
        if zero_all or page in removed:
            src, state = 0, ZERO
        else:
            src = source + page * ps
        with lock:
            try:
                if src:
                    copy(addr, src, ps, mode)
                elif zeropage and not mode:
                    zeropage(addr, ps)
                else:
                    copy(addr, zeros, ps, mode)
                states[page] = state
                stats.missing += 1
                return
            except UffdError as e:
                failure = e
                if e.errno == errno.EEXIST:  # installed meanwhile: wake the faulting thread
                    try:
                        wake(addr, ps)
                        stats.eexist += 1
                        stats.missing += 1
                        return
                    except Exception as e2:
                        failure = e2
                elif e.errno == errno.EAGAIN:
                    stats.eagain += 1
            except Exception as e:
                failure = e
        if isinstance(failure, UffdError) and failure.errno == errno.EAGAIN:
            # an event is pending: read it (nobody else will), then the general way
            server._read_pending(u)
            server._settle_missing(u, Msg._from_words(*w), addr, page, None)
        else:
            server._fault_error(w[2], failure)

    if server._stepping:
        step = server._step

        def resolve_stepped(w: Words) -> None:
            if not w[1] & PF_WP:  # the general path's steps before the choice
                page = ((w[2] & mask) - server.base) // ps
                step(BEFORE_LOCK, page)
                step(BEFORE_RESOLVE, page)
            resolve(w)

        return resolve_stepped
    return resolve

def stepped(server: FaultServer, ioctl: Callable) -> Callable:
    """An install ioctl wrapped with the steps around it (the inline resolver with hooks)."""
    step, ps = server._step, server.page_size

    def call(addr: int, *args):
        page = (addr - server.base) // ps
        step(AFTER_CHOOSE, page)
        r = ioctl(addr, *args)
        step(AFTER_INSTALL, page)
        return r

    return call
