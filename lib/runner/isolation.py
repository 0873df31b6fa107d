"""Case isolation: every case body in a forked child, with a deadline and a verdict.

docs/ARCHITECTURE.md rule 2: every case body runs in a forked child with a deadline.  The parent waits on a
pidfd; at the deadline it records what every thread of the child's process group is blocked
on (/proc/<tid>/stat state and wchan), SIGKILLs the group and reports a TIMEOUT naming it.  A
child killed by a signal is reported with the signal's name.  The parent is a child
subreaper, so grandchildren orphaned by a case are reaped too: nothing outlives a case.

Nothing outlives a killed runner either: the case process dies with it (PR_SET_PDEATHSIG), and
a watchdog process (:class:`GroupWatchdog`) that holds the read end of a pipe from the runner
SIGKILLs the running case's whole process group the moment that pipe reads end-of-file, which
the kernel makes happen when the runner dies, however it dies.

At a deadline the parent first asks the child for its Python stack (faulthandler on a signal,
written from the C signal handler, so it works while the case is blocked in a system call or a
userfault), and the TIMEOUT names the case's current function and line.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from lib import check
from lib.kernel import libc
from lib.kernel.tasks import ChildResult, Deadline, group_tasks
from lib.runner import interrupt
from lib.runner.verdict import Verdict

# ---------------------------------------------------------------------------------------
# isolation


@dataclass
class Outcome:
    """How an isolated call ended."""

    kind: Verdict  # PASS, FAIL, SKIP, XFAIL, TIMEOUT, SIGNAL or ERROR
    message: str = ""
    details: str = ""
    notes: list[str] = field(default_factory=list)
    duration: float = 0.0
    traceback: str = ""

    def __post_init__(self) -> None:
        self.kind = Verdict(self.kind)  # a plain string names the same verdict


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc._libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _where(exc: BaseException) -> str:
    """The frames of the case's own code (not of this module), one line each."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.endswith("lib/runner/isolation.py")]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + "/"
    return "\n".join(f"at {f.filename.removeprefix(root)}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
                     for f in frames[-4:])


def _classify(exc: BaseException, skip_types: tuple, xfail_types: tuple) -> tuple[Verdict, str, str, str]:
    """(kind, message, where, full traceback) of an exception raised by a case."""
    if isinstance(exc, skip_types):
        return Verdict.SKIP, str(getattr(exc, "msg", exc)), "", ""
    if isinstance(exc, xfail_types):
        return Verdict.XFAIL, str(getattr(exc, "msg", exc)), "", ""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = _where(exc)
    if isinstance(exc, check.CannotTest):
        return Verdict.ERROR, check.CANNOT_TEST_PREFIX + str(exc), where, tb
    if isinstance(exc, AssertionError):
        return Verdict.FAIL, str(exc).split("\n")[0] or "assertion failed", where, tb
    msg = getattr(exc, "msg", None) if type(exc).__name__ == "Failed" else None
    if msg:
        return Verdict.FAIL, str(msg), where, tb
    return Verdict.FAIL, f"{type(exc).__name__}: {exc}", where, tb


# ---------------------------------------------------------------------------------------
# the case process group dies with the runner

_WATCHDOG_CODE = """
import os, signal, sys
fd, pg, buf = int(sys.argv[1]), 0, b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except InterruptedError:
        continue
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\\n")
    if lines:
        pg = int(lines[-1])
if pg > 0:
    try:
        os.killpg(pg, signal.SIGKILL)
    except OSError:
        pass
"""


class GroupWatchdog:
    """A small process that SIGKILLs the running case's process group when the runner dies.

    The runner tells it each case's process group (``watch``) and clears it after the case
    (``watch(0)``); the watchdog blocks reading the pipe, and end-of-file (the runner gone,
    even by SIGKILL) makes it kill the last group it was told.  PR_SET_PDEATHSIG alone covers
    only the case's direct child, not the processes a case forks.
    """

    def __init__(self) -> None:
        r, self._w = os.pipe2(os.O_CLOEXEC)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _WATCHDOG_CODE, str(r)], pass_fds=(r,), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            os.close(r)

    def watch(self, pgid: int) -> None:
        try:
            os.write(self._w, f"{pgid}\n".encode())
        except OSError:
            pass  # the watchdog is gone: PR_SET_PDEATHSIG still covers the direct child

    def forget(self) -> None:
        """In a forked case process: close our copy of the runner's end of the pipe (once: a
        case that runs a nested run_isolated forgets again, and the fd number may by then
        belong to one of its own pipes)."""
        if self._w < 0:
            return
        try:
            os.close(self._w)
        except OSError:
            pass
        self._w = -1

    def stop(self) -> None:
        self.watch(0)
        os.close(self._w)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


_watchdog: GroupWatchdog | None = None


def start_watchdog() -> None:
    global _watchdog
    if _watchdog is None:
        _watchdog = GroupWatchdog()


def stop_watchdog() -> None:
    global _watchdog
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None


# ---------------------------------------------------------------------------------------
# where a timed-out case is: its Python stack at the deadline

STACK_SIGNAL = signal.SIGRTMAX - 2  # no case uses real-time signals
STACK_WAIT = 2.0  # bound on the wait for the dump (a stopped or D-state child never answers)
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')


def _arm_stack_dump(fd: int) -> None:
    """In the case process: dump every thread's stack to ``fd`` on STACK_SIGNAL."""
    os.write(fd, f"main 0x{threading.get_ident():016x}\n".encode())
    faulthandler.register(STACK_SIGNAL, file=fd, all_threads=True, chain=False)


def _read_stack(pid: int, fd: int) -> str:
    """Ask the case process for its stack and read the dump (bounded)."""
    try:
        os.kill(pid, STACK_SIGNAL)
    except OSError:
        return ""
    out = b""
    deadline = Deadline(STACK_WAIT)
    p = select.poll()
    p.register(fd, select.POLLIN)
    quiet_ms = 100  # the dump is written in one burst: end it after a pause in the output
    while not deadline.expired():
        has_frames = b"File " in out.split(b"\n", 1)[-1]
        if not p.poll(quiet_ms if has_frames else int(deadline.remaining() * 1000) + 1):
            if has_frames:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


def trim_stack(dump: str) -> str:
    """The dump as shown with a TIMEOUT: each thread's frames above the isolation layer (the
    runner's own frames below it say nothing about the case), paths relative to the suite."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + "/"
    out: list[str] = []
    below = False
    for line in dump.splitlines():
        if line.startswith("main 0x"):
            continue
        if line.startswith(("Thread 0x", "Current thread 0x")):
            below = False
        elif below:
            continue
        elif _FRAME.match(line) and line.rstrip().endswith(" in run_isolated") and "lib/runner/isolation.py" in line:
            below = True
            continue
        out.append(line.replace(root, ""))
    return "\n".join(out)


def where_in_stack(dump: str) -> str:
    """'func (file:line)' of the main thread's innermost frame outside lib/runner/isolation.py, with the
    case function that called it when that is a different frame ('' when the dump has none)."""
    main = ""
    threads: dict[str, list[tuple[str, int, str]]] = {}
    cur: list | None = None
    for line in dump.splitlines():
        if line.startswith("main 0x"):
            main = line.split()[1]
        elif line.startswith(("Thread 0x", "Current thread 0x")):
            cur = threads.setdefault(re.search(r"0x[0-9a-f]+", line).group(0), [])  # type: ignore[union-attr]
        elif cur is not None and (m := _FRAME.match(line)):
            cur.append((m.group(1), int(m.group(2)), m.group(3)))
    frames = threads.get(main) or next(iter(threads.values()), [])
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + "/"
    own = [(f.removeprefix(root), n, fn) for f, n, fn in frames if not f.endswith("lib/runner/isolation.py")]
    if not own:
        return ""
    f, n, fn = own[0]
    text = f"{fn} ({f}:{n})"
    case = next(((cf, cn, cfn) for cf, cn, cfn in own if not cf.startswith(("lib/", "/", ".venv/"))), None)
    if case and case != own[0]:
        text += f", called from {case[2]} ({case[0]}:{case[1]})"
    return text


def run_isolated(
    fn: Callable[[], object],
    timeout: float,
    skip_types: tuple = (),
    xfail_types: tuple = (),
) -> Outcome:
    """Run ``fn`` in a forked child in its own process group, with a deadline."""
    for stream in (os.sys.stdout, os.sys.stderr):  # type: ignore[attr-defined]
        stream.flush()
    r, w = os.pipe2(os.O_CLOEXEC)
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)  # the child starts once the watchdog knows its group
    stack_r, stack_w = os.pipe2(os.O_CLOEXEC)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # --- child
        os.close(r)
        os.close(gate_w)
        os.close(stack_r)
        if _watchdog is not None:  # the watchdog reads end-of-file only once the runner is gone
            _watchdog.forget()
        check._note_fd = w
        try:
            os.setpgid(0, 0)
            libc.set_pdeathsig(signal.SIGKILL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            if os.read(gate_r, 1) != b"1":  # the runner died before letting the case start
                os._exit(0)
            os.close(gate_r)
            _arm_stack_dump(stack_w)
            fn()
            result = {"kind": Verdict.PASS}
        except BaseException as exc:
            kind, msg, where, tb = _classify(exc, skip_types, xfail_types)
            result = {"kind": kind, "message": msg, "details": where, "traceback": tb}
        try:
            check._send(w, result)
        finally:
            os._exit(0)
    # --- parent
    os.close(w)
    os.close(gate_r)
    os.close(stack_w)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child already did it (or is gone)
    if _watchdog is not None:
        _watchdog.watch(pid)
    try:
        os.write(gate_w, b"1")
    except OSError:
        pass  # the child is gone already; its status says how
    os.close(gate_w)
    pidfd = libc.pidfd_open(pid)
    notes: list[str] = []
    result: dict | None = None
    buf = b""
    deadline = Deadline(timeout)
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    p.register(r, select.POLLIN)
    exited = False
    status = 0

    def drain(block: bool) -> None:
        nonlocal buf, result
        while True:
            if not block and not select.select([r], [], [], 0)[0]:
                return
            chunk = os.read(r, 65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                obj = json.loads(line)
                if "note" in obj:
                    notes.append(obj["note"])
                else:
                    result = obj

    try:
        # A signal that landed inside os.fork() (its KeyboardInterrupt swallowed by a fork hook)
        # ends the run here, before the case runs, not after it (lib.runner.interrupt)
        interrupt.check()
        while not exited:
            events = p.poll(int(deadline.remaining() * 1000) + 1)
            for fd, _ in events:
                if fd == r:
                    drain(block=False)
                elif fd == pidfd:
                    _, status = os.waitpid(pid, 0)
                    exited = True
            if not exited and deadline.expired():
                drain(block=False)
                return _timeout(pid, timeout, notes, start, lambda: _read_stack(pid, stack_r))
        drain(block=True)
    finally:
        os.close(pidfd)
        os.close(r)
        os.close(stack_r)
        _kill_group(pid)
        if _watchdog is not None:
            _watchdog.watch(0)
    dur = time.monotonic() - start
    if result is not None:
        diags = [n.removeprefix(check.DIAG_PREFIX) for n in notes if n.startswith(check.DIAG_PREFIX)]
        details = "\n".join(x for x in (result.get("details", ""), *diags) if x)
        return Outcome(Verdict(result["kind"]), result.get("message", ""), details, notes, dur,
                       result.get("traceback", ""))
    cr = ChildResult(pid, status)
    if cr.signal is not None:
        name = signal.Signals(cr.signal).name
        where = f" (last step: {notes[-1]})" if notes else ""
        return Outcome(Verdict.SIGNAL, f"killed by {name}{where}", "", notes, dur)
    return Outcome(Verdict.ERROR, f"case process exited with status {cr.exit_code} without a verdict", "", notes, dur)


def _timeout(pid: int, timeout: float, notes: list[str], start: float,
             read_stack: Callable[[], str] = str) -> Outcome:
    tasks = group_tasks(pid)  # before the stack request, which wakes interruptible waits
    blocked = [t for t in tasks if t[3] in "DS" and t[4] not in ("-", "?", "do_wait", "do_select", "do_sys_poll")]
    lines = [f"{p}/{t} {comm} state {st} wchan {wc}" for p, t, comm, st, wc in tasks]
    stack = read_stack()
    steps = [n for n in notes if not n.startswith(check.DIAG_PREFIX)]
    at = where_in_stack(stack)
    what = steps[-1] if steps else (f"in {at}" if at else "no step recorded")
    if steps and at:
        what += f" (in {at})"
    uffd = [t for t in blocked if "userfault" in t[4]]
    if uffd:
        what += f"; {len(uffd)} thread(s) blocked in {uffd[0][4]}"
    _kill_group(pid)
    return Outcome(
        Verdict.TIMEOUT,
        f"timeout after {timeout:g}s: {what}",
        "tasks at the deadline:\n" + "\n".join(lines)
        + (f"\nPython stacks at the deadline:\n{trim_stack(stack)}" if stack else ""),
        notes,
        time.monotonic() - start,
    )


def _kill_group(pgid: int) -> None:
    """SIGKILL the case's process group and reap its members, orphans included."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    while True:
        try:
            os.waitpid(-pgid, 0)
        except ChildProcessError:
            return
