"""userfaultfd(2): open, handshake, register, resolve, read events.

Semantics follow Documentation/admin-guide/mm/userfaultfd.rst and
include/uapi/linux/userfaultfd.h.  Result fields (copy, zeropage, mapped, updated, move) are
written by the kernel even when the ioctl fails; :class:`UffdError` carries that value so a case
can check it (uffd-unit-tests relies on it, e.g. ``-EAGAIN`` in mmap-changing).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import select
import struct
from dataclasses import dataclass, field, replace

from lib.kernel import abi, libc

_fcntl_ioctl = fcntl.ioctl


class UffdError(OSError):
    """A failed UFFDIO_* ioctl; ``result`` is the kernel-written result field, if any."""

    def __init__(self, err: int, call: str, result: int | None = None) -> None:
        super().__init__(err, f"{call}: {os.strerror(err)}" + (f" (result {result})" if result is not None else ""))
        self.result = result


_PF_WRITE, _PF_WP, _PF_MINOR = (int(abi.PagefaultFlag[n]) for n in ("WRITE", "WP", "MINOR"))
_EVENTS = {int(e): e for e in abi.Event}
_PAGEFAULT, _FORK, _REMAP = abi.Event.PAGEFAULT, abi.Event.FORK, abi.Event.REMAP
# uffd_msg as event + three 64-bit words of the argument union (the serve loop's fast decode)
MSG_WORDS = struct.Struct("<B7xQQQ")
_U32 = 0xFFFFFFFF
# the resolving ioctls' arguments, packed (layouts from lib.kernel.abi)
_RANGE, _COPY, _ZEROPAGE = abi.packer(abi.uffdio_range), abi.packer(abi.uffdio_copy), abi.packer(abi.uffdio_zeropage)
_WRITEPROTECT, _CONTINUE = abi.packer(abi.uffdio_writeprotect), abi.packer(abi.uffdio_continue)
_UFFDIO_COPY, _UFFDIO_ZEROPAGE, _UFFDIO_WRITEPROTECT = abi.UFFDIO_COPY, abi.UFFDIO_ZEROPAGE, abi.UFFDIO_WRITEPROTECT
_WP_MODE_WP, _WP_MODE_DONTWAKE = int(abi.WPMode.WP), int(abi.WPMode.DONTWAKE)


@dataclass(frozen=True)
class Msg:
    """One uffd_msg, decoded by event type."""

    event: abi.Event
    flags: int = 0
    address: int = 0
    ptid: int = 0
    ufd: int = -1
    remap_from: int = 0
    remap_to: int = 0
    remap_len: int = 0
    start: int = 0
    end: int = 0

    @property
    def is_write(self) -> bool:
        return bool(self.flags & _PF_WRITE)

    @property
    def is_wp(self) -> bool:
        return bool(self.flags & _PF_WP)

    @property
    def is_minor(self) -> bool:
        return bool(self.flags & _PF_MINOR)

    @classmethod
    def decode(cls, raw: bytes) -> Msg:
        return cls._from_words(*MSG_WORDS.unpack_from(raw))

    @classmethod
    def _from_words(cls, event: int, a: int, b: int, c: int) -> Msg:
        """Build from the event byte and the three argument words (the fault path: a page
        fault's Msg is made without the dataclass __init__, its other fields keep their
        class defaults; equal to ``Msg(PAGEFAULT, flags=a, address=b, ptid=c)``)."""
        ev = _EVENTS.get(event) or abi.Event(event)
        if ev is _PAGEFAULT:
            m = _new(cls)
            m.__dict__.update(event=ev, flags=a, address=b, ptid=c & _U32)
            return m
        if ev is _FORK:
            return cls(ev, ufd=a & _U32)
        if ev is _REMAP:
            return cls(ev, remap_from=a, remap_to=b, remap_len=c)
        return cls(ev, start=a, end=b)  # REMOVE, UNMAP

    def __str__(self) -> str:
        if self.event == abi.Event.PAGEFAULT:
            return f"PAGEFAULT@{self.address:#x} flags={_flags_repr(self.flags)}"
        if self.event == abi.Event.FORK:
            return f"FORK ufd={self.ufd}"
        if self.event == abi.Event.REMAP:
            return f"REMAP {self.remap_from:#x}->{self.remap_to:#x} len={self.remap_len:#x}"
        return f"{self.event.name} [{self.start:#x}, {self.end:#x})"


_new = object.__new__
_FLAGS_REPR: dict[int, str] = {}


def _flags_repr(flags: int) -> str:
    """repr(PagefaultFlag(flags)), cached per value (the serve loop logs every message)."""
    r = _FLAGS_REPR.get(flags)
    if r is None:
        r = _FLAGS_REPR[flags] = repr(abi.PagefaultFlag(flags))
    return r


MSG_SIZE = ctypes.sizeof(abi.uffd_msg)
assert MSG_WORDS.size == MSG_SIZE
DEFAULT_FLAGS = abi.O_CLOEXEC | abi.O_NONBLOCK


class Userfaultfd:
    """An open userfaultfd.  Use :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.features = 0

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, via: str = "syscall", flags: int = DEFAULT_FLAGS, user_mode_only: bool = False) -> Userfaultfd:
        """Open by the userfaultfd(2) syscall or by /dev/userfaultfd + USERFAULTFD_IOC_NEW."""
        if user_mode_only:
            flags |= abi.UFFD_USER_MODE_ONLY
        if via == "syscall":
            return cls(libc.syscall(abi.NR.userfaultfd, flags))
        if via == "dev":
            dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
            try:
                return cls(libc.ioctl(dev, abi.USERFAULTFD_IOC_NEW, flags, name="USERFAULTFD_IOC_NEW"))
            finally:
                os.close(dev)
        raise ValueError(f"unknown open path {via!r}")

    @classmethod
    def create(cls, features: int = 0, **open_kw) -> Userfaultfd:
        """Open and handshake in one step."""
        u = cls.open(**open_kw)
        try:
            u.api(features)
        except BaseException:
            u.close()
            raise
        return u

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Userfaultfd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.fd

    # -- ioctls ---------------------------------------------------------------------------
    def _ioctl(self, request: int, arg: ctypes.Structure, name: str, result_field: str | None = None):
        try:
            if self.fd >= 0:
                # fcntl.ioctl: a C builtin (cheaper than a ctypes foreign call), GIL released
                # for the call; copies ``arg`` in and back out, result fields included
                _fcntl_ioctl(self.fd, request, arg, True)
            else:
                libc.ioctl(self.fd, request, arg, name=name)
        except OSError as e:
            raise UffdError(e.errno, name, getattr(arg, result_field) if result_field else None) from None
        return arg

    def api(self, features: int = 0, api: int = abi.UFFD_API) -> abi.uffdio_api:
        a = abi.uffdio_api(api=api, features=int(features))
        self._ioctl(abi.UFFDIO_API, a, "UFFDIO_API")
        self.features = a.features
        return a

    def has(self, feature: int) -> bool:
        return (self.features & int(feature)) == int(feature)

    def register(self, addr: int, length: int, mode: int = abi.RegisterMode.MISSING) -> int:
        """UFFDIO_REGISTER; returns the ioctls mask allowed on the range."""
        r = abi.uffdio_register(abi.uffdio_range(addr, length), int(mode), 0)
        return self._ioctl(abi.UFFDIO_REGISTER, r, "UFFDIO_REGISTER").ioctls

    def unregister(self, addr: int, length: int) -> None:
        self._ioctl(abi.UFFDIO_UNREGISTER, abi.uffdio_range(addr, length), "UFFDIO_UNREGISTER")

    def _packed(self, request: int, packer: struct.Struct, name: str, *values: int, result: int = -1) -> int:
        """The fault path's ioctl: arguments packed into a bytearray (see abi.packer), which
        fcntl.ioctl copies in and, failed or not, back out; returns the result field (index
        ``result`` of the packed fields) or 0."""
        buf = bytearray(packer.pack(*values))
        try:
            if self.fd < 0:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            _fcntl_ioctl(self.fd, request, buf, True)
        except OSError as e:
            raise UffdError(e.errno, name, packer.unpack(buf)[result] if result >= 0 else None) from None
        return packer.unpack(buf)[result] if result >= 0 else 0

    def wake(self, addr: int, length: int) -> None:
        self._packed(abi.UFFDIO_WAKE, _RANGE, "UFFDIO_WAKE", addr, length)

    # copy and zeropage resolve most faults: _packed's steps, written out
    def copy(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        buf = bytearray(_COPY.pack(dst, src, length, mode, 0))
        try:
            _fcntl_ioctl(self.fd, _UFFDIO_COPY, buf, True)
        except (OSError, ValueError) as e:  # ValueError: a negative (closed) fd
            raise UffdError(getattr(e, "errno", None) or errno.EBADF, "UFFDIO_COPY", _COPY.unpack(buf)[4]) from None
        return _COPY.unpack(buf)[4]

    def zeropage(self, addr: int, length: int, mode: int = 0) -> int:
        buf = bytearray(_ZEROPAGE.pack(addr, length, mode, 0))
        try:
            _fcntl_ioctl(self.fd, _UFFDIO_ZEROPAGE, buf, True)
        except (OSError, ValueError) as e:
            raise UffdError(getattr(e, "errno", None) or errno.EBADF, "UFFDIO_ZEROPAGE",
                            _ZEROPAGE.unpack(buf)[3]) from None
        return _ZEROPAGE.unpack(buf)[3]

    def writeprotect(self, addr: int, length: int, protect: bool, dontwake: bool = False) -> None:
        mode = (_WP_MODE_WP if protect else 0) | (_WP_MODE_DONTWAKE if dontwake else 0)
        try:  # resolves every sync WP fault: _packed's steps, written out
            _fcntl_ioctl(self.fd, _UFFDIO_WRITEPROTECT, _WRITEPROTECT.pack(addr, length, mode))
        except (OSError, ValueError) as e:  # ValueError: a negative (closed) fd
            raise UffdError(getattr(e, "errno", None) or errno.EBADF, "UFFDIO_WRITEPROTECT") from None

    def cont(self, addr: int, length: int, mode: int = 0) -> int:
        return self._packed(abi.UFFDIO_CONTINUE, _CONTINUE, "UFFDIO_CONTINUE", addr, length, int(mode), 0,
                            result=3)

    def poison(self, addr: int, length: int, mode: int = 0) -> int:
        p = abi.uffdio_poison(abi.uffdio_range(addr, length), int(mode), 0)
        return self._ioctl(abi.UFFDIO_POISON, p, "UFFDIO_POISON", "updated").updated

    def move(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        m = abi.uffdio_move(dst, src, length, int(mode), 0)
        return self._ioctl(abi.UFFDIO_MOVE, m, "UFFDIO_MOVE", "move").move

    # -- events ---------------------------------------------------------------------------
    def wait(self, timeout: float | None) -> bool:
        """Poll for readability; True when a message is ready."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def read_msgs(self, max_msgs: int = 64) -> list[Msg]:
        """Read up to ``max_msgs`` messages in one read(2); [] when none is pending (O_NONBLOCK)."""
        try:
            raw = os.read(self.fd, MSG_SIZE * max_msgs)
        except BlockingIOError:
            return []
        words = Msg._from_words
        return [words(*w) for w in MSG_WORDS.iter_unpack(raw)]

    def read_msg(self, timeout: float) -> Msg:
        """Wait up to ``timeout`` seconds for exactly one message."""
        if not self.wait(timeout):
            raise TimeoutError(f"no uffd message within {timeout}s")
        msgs = self.read_msgs(1)
        if not msgs:
            raise TimeoutError("uffd readable but no message")
        return msgs[0]


# ---------------------------------------------------------------------------------------
# probing (docs/ARCHITECTURE.md rule 4: features are found by probing, not by kernel version)
#
# Who may open what (fs/userfaultfd.c): userfaultfd(2) with UFFD_USER_MODE_ONLY is always
# allowed; without it only with CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.  The
# /dev/userfaultfd path checks nothing but the device's file permissions, and its uffds take
# kernel-mode faults.  A user-mode-only uffd refuses a fault taken in kernel mode
# (handle_userfault: the copy_to_user/copy_from_user of a syscall, GUP) and the syscall fails
# with EFAULT.  UFFDIO_API refuses UFFD_FEATURE_EVENT_FORK with EPERM without CAP_SYS_PTRACE.
@dataclass(frozen=True)
class Availability:
    """What this process may do with userfaultfd, found on throw-away fds."""

    syscall: bool  # userfaultfd(2) with kernel-mode faults allowed
    syscall_user_only: bool  # userfaultfd(2) with UFFD_USER_MODE_ONLY
    dev: bool  # /dev/userfaultfd
    features: int  # what UFFDIO_API with features=0 reports as supported
    reason: str  # why something is missing, if anything is
    refused: dict[int, str] = field(default_factory=dict)  # feature bit -> why its handshake fails here

    @property
    def any(self) -> bool:
        return self.syscall or self.syscall_user_only or self.dev

    @property
    def kernel_faults(self) -> bool:
        """A uffd that takes kernel-mode faults can be opened (either path)."""
        return self.syscall or self.dev

    @property
    def auto_user_mode_only(self) -> bool:
        """What :func:`open_for` picks by default: UFFD_USER_MODE_ONLY exactly when this process
        may not open a uffd that takes kernel-mode faults but may open a user-mode-only one."""
        return not self.kernel_faults and self.syscall_user_only

    def why(self, key: str) -> str:
        """The probe's error for one way of opening (``syscall``, ``syscall_user_only``, ``dev``)."""
        for part in self.reason.split("; "):
            if part.startswith(key + ":"):
                return part.split(":", 1)[1].strip()
        return self.reason or "unknown"

    def missing(self, features: int) -> list[str]:
        return [f.name for f in abi.Feature if (int(features) & f) and not (self.features & f)]

    def refusals(self, features: int) -> list[str]:
        """``NAME: why`` for each requested feature the kernel offers but refuses this process."""
        return [f"{abi.Feature(bit).name}: {why}" for bit, why in self.refused.items() if int(features) & bit]


def _try_open(**kw) -> tuple[Userfaultfd | None, str]:
    try:
        return Userfaultfd.open(**kw), ""
    except OSError as e:
        return None, e.strerror or str(e)


_PRIVILEGE_HINT = {
    "syscall": "without UFFD_USER_MODE_ONLY needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1",
    "dev": "the device's file permissions",
}


def _refused(features: int, user_mode_only: bool) -> dict[int, str]:
    """Handshake each offered feature bit alone on a throw-away uffd opened as open_for would:
    the bits whose UFFDIO_API fails with EPERM (a privilege check, e.g. EVENT_FORK without
    CAP_SYS_PTRACE).  Other errors are left for the case to meet and report."""
    refused = {}
    for f in abi.Feature:
        if not features & int(f):
            continue
        try:
            u = open_for(0, user_mode_only=user_mode_only, handshake=False)
        except OSError:
            return refused
        with u:
            try:
                u.api(int(f))
            except OSError as e:
                if e.errno == errno.EPERM:
                    hint = " (needs CAP_SYS_PTRACE)" if f == abi.Feature.EVENT_FORK else ""
                    refused[int(f)] = f"UFFDIO_API: {os.strerror(e.errno)}{hint}"
    return refused


@functools.cache
def probe() -> Availability:
    reasons = []
    features = 0
    flags = {}
    for key, kw in (
        ("syscall", {"via": "syscall"}),
        ("syscall_user_only", {"via": "syscall", "user_mode_only": True}),
        ("dev", {"via": "dev"}),
    ):
        u, why = _try_open(**kw)
        flags[key] = u is not None
        if u is None:
            hint = _PRIVILEGE_HINT.get(key)
            reasons.append(f"{key}: {why}" + (f" ({hint})" if hint else ""))
            continue
        with u:
            if not features:
                try:
                    features = u.api(0).features
                except OSError as e:
                    reasons.append(f"UFFDIO_API: {e}")
    a = Availability(features=features, reason="; ".join(reasons), **flags)
    if not a.any:
        return a
    return replace(a, refused=_refused(features, a.auto_user_mode_only))


def open_for(features: int = 0, user_mode_only: bool | None = None, flags: int = DEFAULT_FLAGS,
             handshake: bool = True) -> Userfaultfd:
    """Open a uffd the way uffd-common's uffd_open does: syscall first, then /dev/userfaultfd;
    then UFFDIO_API(``features``) unless ``handshake`` is false.

    ``user_mode_only``: True opens with UFFD_USER_MODE_ONLY, False without it (a case that
    needs kernel-mode faults; it declares so with lib.kernel.needs.kernel_faults), None (default) as
    :func:`probe` found this process may: without the flag where a uffd taking kernel-mode
    faults can be opened (as root), with it where only a user-mode-only one can (an
    unprivileged process under vm.unprivileged_userfaultfd=0).
    """
    if user_mode_only is None:
        user_mode_only = probe().auto_user_mode_only
    last: OSError | None = None
    for via in ("syscall", "dev"):
        try:
            if not handshake:
                return Userfaultfd.open(via=via, user_mode_only=user_mode_only, flags=flags)
            return Userfaultfd.create(features, via=via, user_mode_only=user_mode_only, flags=flags)
        except UffdError:
            raise
        except OSError as e:
            last = e
    assert last is not None
    raise last
