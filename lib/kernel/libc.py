"""ctypes bindings to libc and raw system calls.

Every wrapper raises ``OSError(errno, "<call>: <strerror>")`` on failure, naming the call.

docs/ARCHITECTURE.md rule 1 (the GIL and faults): memory registered with a userfaultfd is only ever touched
through the functions in the "memory primitives" section below.  They are foreign calls made
through ``ctypes.CDLL``, which drops the GIL for the duration of the call, so a thread blocked
in a userfault does not stop the handler thread of the same interpreter.  Never index a ctypes
pointer or a memoryview over registered memory in a process that hosts a handler.
"""

from __future__ import annotations

import ctypes
import os

from lib.kernel import abi

_libc = ctypes.CDLL(None, use_errno=True)

c_void_p = ctypes.c_void_p
c_size_t = ctypes.c_size_t
c_int = ctypes.c_int
c_long = ctypes.c_long
c_ulong = ctypes.c_ulong


def _fn(name: str, restype, *argtypes):
    f = getattr(_libc, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_mmap = _fn("mmap", c_void_p, c_void_p, c_size_t, c_int, c_int, c_int, ctypes.c_long)
_munmap = _fn("munmap", c_int, c_void_p, c_size_t)
_mprotect = _fn("mprotect", c_int, c_void_p, c_size_t, c_int)
_madvise = _fn("madvise", c_int, c_void_p, c_size_t, c_int)
_mremap = _fn("mremap", c_void_p, c_void_p, c_size_t, c_size_t, c_int, c_void_p)
_memset = _fn("memset", c_void_p, c_void_p, c_int, c_size_t)
_memcpy = _fn("memcpy", c_void_p, c_void_p, c_void_p, c_size_t)
_memcmp = _fn("memcmp", c_int, c_void_p, c_void_p, c_size_t)
_ioctl = _fn("ioctl", c_int, c_int, c_ulong, c_void_p)
_syscall = _fn("syscall", c_long, c_long)
_syscall.argtypes = None  # variadic
_read = _fn("read", ctypes.c_ssize_t, c_int, c_void_p, c_size_t)
_write = _fn("write", ctypes.c_ssize_t, c_int, c_void_p, c_size_t)
_pthread_mutex_lock = _fn("pthread_mutex_lock", c_int, c_void_p)
_pthread_mutex_unlock = _fn("pthread_mutex_unlock", c_int, c_void_p)
_gnu_get_libc_version = _fn("gnu_get_libc_version", ctypes.c_char_p)


def _check(ret: int, call: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return ret


def syscall(nr: int, *args: int, name: str | None = None) -> int:
    """Raw syscall(2); integer arguments are passed as C longs."""
    ret = _syscall(c_long(nr), *[c_long(a) if isinstance(a, int) else a for a in args])
    return _check(ret, name or abi.NR(nr).name)


# ---------------------------------------------------------------------------------------
# mappings
def mmap(
    length: int,
    prot: int = abi.PROT_READ | abi.PROT_WRITE,
    flags: int = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS,
    fd: int = -1,
    offset: int = 0,
    addr: int = 0,
) -> int:
    ret = _mmap(addr or None, length, prot, flags, fd, offset)
    if ret is None or ret == abi.MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    return int(ret)


def munmap(addr: int, length: int) -> None:
    _check(_munmap(addr, length), "munmap")


def mprotect(addr: int, length: int, prot: int) -> None:
    _check(_mprotect(addr, length, prot), "mprotect")


def madvise(addr: int, length: int, advice: int) -> None:
    """madvise(2).  Releases the GIL, so it may block on a userfault (POPULATE_*)."""
    name = abi.Madv(advice).name if advice in abi.Madv._value2member_map_ else str(advice)
    _check(_madvise(addr, length, advice), f"madvise(MADV_{name})")


def mremap(old: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int:
    ret = _mremap(old, old_len, new_len, flags, new_addr or None)
    if ret is None or ret == abi.MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mremap: {os.strerror(err)}")
    return int(ret)


def memfd_create(name: str, flags: int = abi.MFD_CLOEXEC) -> int:
    return syscall(abi.NR.memfd_create, ctypes.c_char_p(name.encode()), flags)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    syscall(abi.NR.fallocate, fd, mode, offset, length)


def ioctl(fd: int, request: int, arg: ctypes.Structure | int | None = None, name: str = "") -> int:
    """ioctl(2) with a pointer to ``arg`` (a ctypes structure) or an integer argument."""
    if isinstance(arg, ctypes.Structure):
        ptr = ctypes.addressof(arg)
    else:
        ptr = arg or 0
    return _check(_ioctl(fd, request, ptr), name or f"ioctl({request:#x})")


def gettid() -> int:
    return syscall(abi.NR.gettid)


def pidfd_open(pid: int) -> int:
    return syscall(abi.NR.pidfd_open, pid, 0)


def vmsplice(fd: int, addr: int, length: int, flags: int = 0) -> int:
    iov = abi.iovec(addr, length)
    return syscall(abi.NR.vmsplice, fd, ctypes.addressof(iov), 1, flags)


_restorer = 0


def sigreturn_restorer() -> int:
    """The address of this process's sa_restorer: one read+exec page holding
    abi.RESTORE_RT_CODE (what glibc's and musl's __restore_rt do; glibc does not export it).
    Made once; a forked child inherits it."""
    global _restorer
    if not _restorer:
        page = mmap(os.sysconf("SC_PAGE_SIZE"))
        ctypes.memmove(page, abi.RESTORE_RT_CODE, len(abi.RESTORE_RT_CODE))
        mprotect(page, os.sysconf("SC_PAGE_SIZE"), abi.PROT_READ | abi.PROT_EXEC)
        _restorer = page
    return _restorer


def rt_sigaction(sig: int, act: abi.sigaction | None, old: abi.sigaction | None = None) -> None:
    """rt_sigaction(2) with the kernel's struct sigaction (no glibc in between: ``old`` read
    back and passed again restores exactly what was installed, restorer included)."""
    syscall(abi.NR.rt_sigaction, sig, ctypes.addressof(act) if act is not None else None,
            ctypes.addressof(old) if old is not None else None, abi.SIGSET_SIZE)


def sigaction_siginfo(handler: int) -> abi.sigaction:
    """A struct sigaction for an SA_SIGINFO ``handler`` (a C function pointer), nothing masked
    beyond the signal itself, returning through :func:`sigreturn_restorer`."""
    return abi.sigaction(handler=handler, flags=abi.SA_SIGINFO | abi.SA_RESTORER,
                         restorer=sigreturn_restorer(), mask=0)


PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = 9) -> None:
    """Die with ``sig`` (SIGKILL) when the parent dies: nothing outlives a SIGKILLed run."""
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def glibc_version() -> str:
    return _gnu_get_libc_version().decode()


# ---------------------------------------------------------------------------------------
# memory primitives (GIL released for the whole access; see rule 1)
def fill(addr: int, byte: int, length: int) -> None:
    """memset: a user-mode write of every byte."""
    _memset(addr, byte, length)


def copy(dst: int, src: int, length: int) -> None:
    _memcpy(dst, src, length)


def read(addr: int, length: int) -> bytes:
    """A user-mode read of ``length`` bytes at ``addr`` (memcpy into a private buffer)."""
    buf = ctypes.create_string_buffer(length)
    _memcpy(buf, addr, length)
    return buf.raw


def write(addr: int, data: bytes) -> None:
    """A user-mode write of ``data`` at ``addr``."""
    buf = ctypes.create_string_buffer(data, len(data))
    _memcpy(addr, buf, len(data))


def compare(addr: int, data: bytes) -> bool:
    """True when memory at ``addr`` equals ``data`` (memcmp, a user-mode read)."""
    buf = ctypes.create_string_buffer(data, len(data))
    return _memcmp(addr, buf, len(data)) == 0


def is_filled(addr: int, byte: int, length: int) -> bool:
    return compare(addr, bytes([byte]) * length)


def is_uniform(addr: int, byte: int, length: int) -> bool:
    """True when every byte of [addr, addr+length) is ``byte``, without a buffer of that size:
    the first byte is ``byte`` and memcmp(addr, addr+1, length-1) finds no difference."""
    if length <= 0:
        return True
    if read(addr, 1)[0] != byte:
        return False
    return _memcmp(addr, addr + 1, length - 1) == 0


def mem_equal(a: int, b: int, length: int) -> bool:
    """memcmp of two memory ranges (user-mode reads of both)."""
    return _memcmp(a, b, length) == 0


def touch_read(addr: int) -> int:
    """Read one byte in user mode; returns it."""
    return read(addr, 1)[0]


def touch_write(addr: int, byte: int = 0) -> None:
    _memset(addr, byte, 1)


def fd_read_into(fd: int, addr: int, length: int) -> int:
    """read(2) into ``addr``: the kernel touches the memory (a kernel-mode fault)."""
    return _check(_read(fd, addr, length), "read")


def fd_write_from(fd: int, addr: int, length: int) -> int:
    """write(2) from ``addr``: the kernel reads the memory (a kernel-mode fault)."""
    return _check(_write(fd, addr, length), "write")


def mutex_lock(addr: int) -> None:
    """pthread_mutex_lock on a mutex living at ``addr`` (glibc reads its type first)."""
    ret = _pthread_mutex_lock(addr)
    if ret:
        raise OSError(ret, f"pthread_mutex_lock: {os.strerror(ret)}")


def mutex_unlock(addr: int) -> None:
    ret = _pthread_mutex_unlock(addr)
    if ret:
        raise OSError(ret, f"pthread_mutex_unlock: {os.strerror(ret)}")


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
