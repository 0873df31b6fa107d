"""A registered region with a handler serving it, set up in the order that is always safe.

Order matters: the uffd is opened and handshaken here, the handler is started (forked or
spawned processes are created *before* registration, so a fork never carries a registered
VMA, which with UFFD_FEATURE_EVENT_FORK would block the fork on an unread FORK event), then
the range is registered.  Teardown unregisters before closing (with EVENT_REMOVE negotiated an
unread event would otherwise block munmap: e2b PR #2476), then stops the handler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from lib.kernel import abi, handler
from lib.kernel.memory import Region
from lib.kernel.uffd import Userfaultfd, open_for


@dataclass
class Served:
    uffd: Userfaultfd
    handler: handler.ThreadHandler | handler.ProcessHandler | handler.SpawnedHandler
    region: Region
    ioctls: int
    source: handler.Source | None

    def stats(self) -> handler.Stats:
        return self.handler.stats()


@contextlib.contextmanager
def served(
    region: Region,
    topology: str = "scm_rights",
    features: int = 0,
    mode: int = abi.RegisterMode.MISSING,
    source: handler.Source | None = None,
    options: handler.Options | None = None,
    user_mode_only: bool | None = None,  # None: as lib.kernel.uffd.open_for picks
) -> Iterator[Served]:
    u = open_for(features, user_mode_only=user_mode_only)
    h = None
    try:
        h = handler.TOPOLOGIES[topology](u, region.addr, region.size, region.page_size, source, options).start()
        ioctls = u.register(region.addr, region.size, mode)
        s = Served(u, h, region, ioctls, source)
        yield s
    finally:
        with contextlib.suppress(OSError):
            u.unregister(region.addr, region.size)
        if h is not None:
            h.stop()
        u.close()


def flush(h: handler.ThreadHandler | handler.ProcessHandler | handler.SpawnedHandler) -> None:
    """Wait until the handler has handled every message it has read: pause() returns once the
    serve loop finished its batch.  A caller released by the *read* of its event (fork with
    EVENT_FORK, madvise or munmap with EVENT_REMOVE/UNMAP) can return before the handler has
    recorded that event, so take the statistics after this."""
    h.pause()
    h.resume()
