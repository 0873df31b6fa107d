"""Kernel log watch: /dev/kmsg records logged while a case ran.

A WARNING, BUG, Oops, "Bad page" or similar splat (the table in lib.runner.splats) logged during
a case fails that case and is attached to its report: the kernel itself said something went
wrong, whatever the case saw.
/dev/kmsg semantics: Documentation/ABI/testing/dev-kmsg (one record per read, EAGAIN at the
end with O_NONBLOCK, EPIPE when records were overwritten).
"""

from __future__ import annotations

import os

from lib.runner import splats


class KmsgWatch:
    """Reads the records added to the kernel log since :meth:`mark`."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self.fd = None
            self.unavailable = f"{path}: {e.strerror}"
        else:
            self.unavailable = ""

    def mark(self) -> None:
        """Forget everything logged so far."""
        if self.fd is not None:
            os.lseek(self.fd, 0, os.SEEK_END)

    def read(self) -> list[str]:
        """Messages logged since the last mark/read."""
        out: list[str] = []
        if self.fd is None:
            return out
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                return out
            except BrokenPipeError:
                out.append("(kernel log records were lost: buffer overrun)")
                continue
            if not rec:
                return out
            _head, _, msg = rec.decode("utf-8", "replace").partition(";")
            out.append(msg.split("\n", 1)[0])

    def splats(self) -> tuple[list[str], list[str]]:
        """(all messages, the ones that are splats)."""
        msgs = self.read()
        return msgs, [m for m in msgs if splats.is_splat(m)]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
