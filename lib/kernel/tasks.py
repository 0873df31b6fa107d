"""Processes and threads as the kernel shows them: deadlines, cow.c's comm pipes, fork with a
verdict by exit status (fork_call/reap) or with the child's failure relayed (run_in_child), and
task states read from /proc/<tid>/stat and wchan.

Races are judged from these states, never from the clock (docs/ARCHITECTURE.md, "Races and
waits"): a wait ends when a thread reaches the state, or at a deadline.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from lib.check import CannotTest
from lib.kernel import libc

# ---------------------------------------------------------------------------------------
# deadlines


class Deadline:
    """A point in time; every wait in the suite is bounded by one."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.001) -> object:
    """Poll ``pred`` until it returns a truthy value or ``timeout`` passes (then TimeoutError).

    The poll interval grows from 1 ms to 50 ms; this is a bounded wait for an observable state,
    not a sleep used to synchronise.
    """
    d = Deadline(timeout)
    while True:
        v = pred()
        if v:
            return v
        if d.expired():
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(min(interval, d.remaining()))
        interval = min(interval * 2, 0.05)


# ---------------------------------------------------------------------------------------
# comm pipes (cow.c's child_ready / parent_ready)


class Pipe:
    """A one-byte signalling pipe with deadline-bounded waits."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC)

    def signal(self) -> None:
        os.write(self.w, b"0")

    def wait(self, timeout: float = 30.0) -> None:
        p = select.poll()
        p.register(self.r, select.POLLIN)
        if not p.poll(int(timeout * 1000)):
            raise TimeoutError(f"peer did not signal within {timeout}s")
        if os.read(self.r, 1) != b"0":
            raise EOFError("peer closed the pipe without signalling")

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class CommPipes:
    def __init__(self) -> None:
        self.child_ready = Pipe()
        self.parent_ready = Pipe()

    def close(self) -> None:
        self.child_ready.close()
        self.parent_ready.close()


@dataclass
class ChildResult:
    pid: int
    status: int

    @property
    def exit_code(self) -> int | None:
        return os.waitstatus_to_exitcode(self.status) if os.WIFEXITED(self.status) else None

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    def describe(self) -> str:
        if self.signal is not None:
            return f"child {self.pid} killed by {signal.Signals(self.signal).name}"
        return f"child {self.pid} exited with status {self.exit_code}"


def fork_call(fn: Callable[[], int | bool | None]) -> int:
    """Fork; the child runs ``fn`` and _exits with its verdict (0 = good).

    ``fn`` may return an int exit code, a bool (True = good) or None (= good).  An exception
    in the child exits with 2 after printing the traceback to stderr.
    """
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            v = fn()
            code = 0 if v is None or v is True else (1 if v is False else int(v))
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid: int, timeout: float = 30.0) -> ChildResult:
    """Wait for ``pid`` with a deadline; SIGKILL it if the deadline passes."""
    fd = libc.pidfd_open(pid)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        if not p.poll(int(timeout * 1000)):
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            raise TimeoutError(f"child {pid} did not finish within {timeout}s (killed)")
        _, status = os.waitpid(pid, 0)
        return ChildResult(pid, status)
    finally:
        os.close(fd)


def _verdict_of(exc: BaseException, skip_types: tuple[type[BaseException], ...]) -> tuple[str, str]:
    """(kind, message) of an exception raised by a run_in_child function."""
    if isinstance(exc, skip_types):
        return "skip", str(getattr(exc, "msg", exc))
    if isinstance(exc, CannotTest):
        return "cannot_test", str(exc)
    if isinstance(exc, AssertionError):
        return "fail", str(exc).split("\n")[0] or "assertion failed"
    return "fail", f"{type(exc).__name__}: {exc}"


def run_in_child(
    fn: Callable[[], object],
    timeout: float,
    skip_types: tuple[type[BaseException], ...] = (),
    skip: Callable[[str], object] | None = None,
) -> None:
    """Run ``fn`` in a forked child and make its verdict this process's: a failure raises
    AssertionError("in the child: ..."), lib.check.CannotTest stays CannotTest, an exception of
    ``skip_types`` calls ``skip(message)`` (e.g. pytest.skip; without ``skip``, a failure).

    The child sends its verdict through a pipe and exits; the parent reads it and reaps the
    child within ``timeout`` (then SIGKILLs it: a failure naming the deadline).  The child dies
    with its parent (PR_SET_PDEATHSIG) and stays in its process group."""
    r, w = os.pipe2(os.O_CLOEXEC)

    def child() -> int:
        os.close(r)
        libc.set_pdeathsig()
        kind, message = "pass", ""
        try:
            fn()
        except BaseException as e:  # the verdict travels to the parent
            kind, message = _verdict_of(e, skip_types)
        os.write(w, json.dumps({"kind": kind, "message": message[:2000]}).encode())
        return 0

    pid = fork_call(child)
    os.close(w)
    d = Deadline(timeout)
    raw = b""
    try:
        p = select.poll()
        p.register(r, select.POLLIN)
        while not d.expired():
            if not p.poll(int(d.remaining() * 1000) + 1):
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(r)
    try:
        result = reap(pid, d.remaining())
    except TimeoutError:
        raise AssertionError(f"in the child: no verdict within {timeout:g}s (child {pid} killed)") from None
    if not raw:
        raise AssertionError(f"in the child: no verdict ({result.describe()})")
    verdict = json.loads(raw)
    kind, message = verdict["kind"], verdict["message"]
    if kind == "pass":
        return
    if kind == "skip" and skip is not None:
        skip(message)
        return
    if kind == "cannot_test":
        raise CannotTest(f"in the child: {message}")
    raise AssertionError(f"in the child: {message}")


# ---------------------------------------------------------------------------------------
# thread states (/proc/<tid>/stat) for deterministic race checks and timeout reports


def task_state(tid: int, pid: int | None = None) -> str:
    """The one-letter scheduler state of a task (R, S, D, T, Z, ...), '' if gone."""
    path = f"/proc/{pid}/task/{tid}/stat" if pid else f"/proc/{tid}/stat"
    try:
        with open(path) as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def task_wchan(tid: int) -> str:
    try:
        with open(f"/proc/{tid}/wchan") as f:
            return f.read().strip() or "-"
    except OSError:
        return "?"


def wait_task_state(tid: int, states: str, timeout: float = 5.0, wchan: str | None = None) -> str:
    """Wait until ``tid`` is in one of ``states`` (and blocked in ``wchan`` if given)."""

    def ok() -> str | None:
        s = task_state(tid)
        if s and s in states and (wchan is None or task_wchan(tid) == wchan):
            return s
        return None

    what = f"task {tid} in state {states}" + (f" at {wchan}" if wchan else "")
    return str(wait_until(ok, timeout, what))


def proc_stats():
    """(pid, comm, fields after the comm) of every process in /proc/<pid>/stat: fields[0] is
    the state, [1] the ppid, [2] the process group."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(d), stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def group_tasks(pgid: int) -> list[tuple[int, int, str, str, str]]:
    """(pid, tid, comm, state, wchan) of every task in process group ``pgid``."""
    out = []
    for pid, _comm, fields in proc_stats():
        d = str(pid)
        if int(fields[2]) != pgid:
            continue
        try:
            tids = os.listdir(f"/proc/{d}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{d}/task/{t}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            out.append((int(d), int(t), comm, task_state(int(t), int(d)), task_wchan(int(t))))
    return out
