"""A minimal io_uring through raw syscalls (no liburing): fixed buffers and WRITE_FIXED.

What cow.c's and gup_longterm.c's io_uring cases (built only with liburing upstream) need:
io_uring_setup(2) with one entry, the SQ/CQ rings and the SQE array mmap()ed,
IORING_REGISTER_BUFFERS on a range (a R/W longterm pin: FOLL_WRITE | FOLL_PIN |
FOLL_LONGTERM, io_uring/rsrc.c), one IORING_OP_WRITE_FIXED SQE, io_uring_enter(2) with
GETEVENTS and the CQE's result.  Layouts: lib.kernel.abi (include/uapi/linux/io_uring.h).

Only ever used on memory that no userfaultfd is registered on, so ring memory is accessed
through ctypes directly.
"""

from __future__ import annotations

import ctypes
import os
import resource

from lib.kernel import abi, caps, libc, system

IO_URING_DISABLED = "/proc/sys/kernel/io_uring_disabled"


def disabled_reason() -> str:
    """Why io_uring_setup may be refused (kernel.io_uring_disabled), '' when it is allowed."""
    v = system.read_text(IO_URING_DISABLED, "0")
    if v == "2":
        return "io_uring disabled (kernel.io_uring_disabled=2)"
    if v == "1" and os.geteuid() != 0:
        return "io_uring restricted to CAP_SYS_ADMIN/io_uring_group (kernel.io_uring_disabled=1)"
    return ""


def memlock_limit_reason(size: int) -> str:
    """Why registering ``size`` bytes would be refused by RLIMIT_MEMLOCK, '' when it would not:
    io_uring accounts registered buffers against RLIMIT_MEMLOCK unless the process has
    CAP_IPC_LOCK (io_uring/rsrc.c io_account_mem).  A probe, decided before registering."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or caps.has(caps.CAP_IPC_LOCK) or size <= soft:
        return ""
    return f"RLIMIT_MEMLOCK {soft} bytes < {size} bytes to register, without CAP_IPC_LOCK"


class IoUringUnavailable(Exception):
    """io_uring cannot be used here (the message is the skip reason)."""


class Ring:
    """One io_uring (``entries`` SQ entries)."""

    def __init__(self, entries: int = 1) -> None:
        self.params = abi.io_uring_params()
        try:
            self.fd = libc.syscall(abi.NR.io_uring_setup, entries, ctypes.addressof(self.params))
        except OSError as e:
            why = disabled_reason() or "kernel without CONFIG_IO_URING?"
            raise IoUringUnavailable(f"io_uring_setup() failed: {e.strerror} ({why})") from None
        p = self.params
        self._maps: list[tuple[int, int]] = []
        self.buffers = False
        try:
            sq_size = p.sq_off.array + p.sq_entries * 4
            cq_size = p.cq_off.cqes + p.cq_entries * ctypes.sizeof(abi.io_uring_cqe)
            shared = abi.MAP_SHARED | abi.MAP_POPULATE
            rw = abi.PROT_READ | abi.PROT_WRITE
            if p.features & abi.IORING_FEAT_SINGLE_MMAP:
                sq_size = cq_size = max(sq_size, cq_size)
                self.sq = self.cq = self._mmap(sq_size, rw, shared, abi.IORING_OFF_SQ_RING)
            else:
                self.sq = self._mmap(sq_size, rw, shared, abi.IORING_OFF_SQ_RING)
                self.cq = self._mmap(cq_size, rw, shared, abi.IORING_OFF_CQ_RING)
            self.sqes = self._mmap(p.sq_entries * ctypes.sizeof(abi.io_uring_sqe), rw, shared, abi.IORING_OFF_SQES)
        except BaseException:
            self.close()
            raise

    def _mmap(self, size: int, prot: int, flags: int, off: int) -> int:
        addr = libc.mmap(size, prot, flags, self.fd, off)
        self._maps.append((addr, size))
        return addr

    def _u32(self, addr: int) -> ctypes.c_uint32:
        return ctypes.c_uint32.from_address(addr)

    # -- fixed buffers --------------------------------------------------------------------
    def register_buffer(self, addr: int, size: int) -> None:
        """IORING_REGISTER_BUFFERS: one fixed buffer (pinned R/W, longterm); raises OSError."""
        iov = abi.iovec(addr, size)
        libc.syscall(abi.NR.io_uring_register, self.fd, abi.IoringRegister.REGISTER_BUFFERS,
                     ctypes.addressof(iov), 1, name="io_uring_register(IORING_REGISTER_BUFFERS)")
        self.buffers = True

    def unregister_buffers(self) -> None:
        if self.buffers:
            libc.syscall(abi.NR.io_uring_register, self.fd, abi.IoringRegister.UNREGISTER_BUFFERS, 0, 0,
                         name="io_uring_register(IORING_UNREGISTER_BUFFERS)")
            self.buffers = False

    # -- one request ----------------------------------------------------------------------
    def write_fixed(self, fd: int, addr: int, size: int, offset: int = 0, buf_index: int = 0) -> int:
        """Submit IORING_OP_WRITE_FIXED of [addr, addr+size) to ``fd`` and wait; returns cqe.res."""
        p = self.params
        tail = self._u32(self.sq + p.sq_off.tail)
        mask = self._u32(self.sq + p.sq_off.ring_mask).value
        idx = tail.value & mask
        sqe = abi.io_uring_sqe.from_address(self.sqes + idx * ctypes.sizeof(abi.io_uring_sqe))
        ctypes.memset(ctypes.addressof(sqe), 0, ctypes.sizeof(sqe))
        sqe.opcode = abi.IoringOp.WRITE_FIXED
        sqe.fd = fd
        sqe.off = offset
        sqe.addr = addr
        sqe.len = size
        sqe.buf_index = buf_index
        sqe.user_data = 0x6B6D6D
        self._u32(self.sq + p.sq_off.array + 4 * idx).value = idx
        tail.value = tail.value + 1  # published to the kernel by io_uring_enter() below
        libc.syscall(abi.NR.io_uring_enter, self.fd, 1, 1, abi.IORING_ENTER_GETEVENTS, None, 0,
                     name="io_uring_enter")
        head = self._u32(self.cq + p.cq_off.head)
        ctail = self._u32(self.cq + p.cq_off.tail).value
        if head.value == ctail:
            raise OSError(0, "io_uring_enter returned without a completion")
        cmask = self._u32(self.cq + p.cq_off.ring_mask).value
        cqe = abi.io_uring_cqe.from_address(self.cq + p.cq_off.cqes
                                            + (head.value & cmask) * ctypes.sizeof(abi.io_uring_cqe))
        res = int(cqe.res)
        head.value = head.value + 1
        return res

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self.unregister_buffers()
        except OSError:
            pass
        for a, n in self._maps:
            libc.munmap(a, n)
        self._maps.clear()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
