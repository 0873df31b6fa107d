"""Watchdog and parser for a guest's console stream (pure: no I/O, no clock of its own).

`run_suite.py --kernel IMAGE` boots a kernel under virtme-ng and watches the merged
console: the kernel's serial console (printk) and the guest command's stdout arrive on the
same host pty, interleaved. This module turns that text into facts:

- boot progress (`BootStage`): nothing yet, firmware/boot loader text, kernel running,
  virtme init running, our guest wrapper started, guest command exited;
- kernel splats (the table in lib.runner.splats): ``Kernel panic - not syncing``, ``Oops``, ``BUG:`` (including
  ``Bad page state``, soft lockups, hung tasks, RCU stalls), ``WARNING:``;
- the guest's TAP lines (live progress only: the results themselves travel through a shared
  directory, never through this console) and the case running at any moment, from the
  ``# [RUN] <tap name>`` marker the suite prints before each case;
- the guest command's exit code, from the wrapper's ``KMM-EXIT=<rc>`` sentinel;
- time-outs: no boot within the boot deadline, no console progress for the stall deadline,
  the overall VM deadline. The clock is always passed in (``now``), so all of it is testable
  on recorded text.

Interleaving: the kernel does not know about the guest's stdout, so a printk line can land
in the middle of a TAP line, either glued to it (``not ok 2 cow_thp_fo[   12.3] BUG: ...``)
or after a spurious line break. Kernel lines are recognised by their printk timestamp
(``[    1.234567]``); a guest line cut by kernel lines is re-joined with its continuation
(see `ConsoleWatchdog.feed`).

Typical use (see lib/runner/vm.py)::

    wd = ConsoleWatchdog(start=t0, boot_timeout=300, stall_timeout=300, vm_timeout=900)
    for chunk, now in stream:
        for line in wd.feed(chunk, now):
            ...                      # live progress
        if wd.check(now) is not None:
            break                    # kill the VM
    result = wd.finish(now, killed=wd.check(now))
"""

from __future__ import annotations

import collections
import enum
import re
from dataclasses import dataclass, field

from lib.runner import splats

__all__ = [
    "EXIT_SENTINEL",
    "START_SENTINEL",
    "BootStage",
    "ConsoleLine",
    "ConsoleResult",
    "ConsoleWatchdog",
    "Splat",
    "Verdict",
    "classify_kernel_line",
    "parse_console",
]

#: Printed by the guest wrapper (lib/runner/vm.py) right before the guest command starts.
START_SENTINEL = "KMM-GUEST-START"
#: Printed by the guest wrapper after the guest command, as ``KMM-EXIT=<rc>``.
EXIT_SENTINEL = "KMM-EXIT="


class Verdict(enum.StrEnum):
    """Outcome of a VM run as seen on its console, in no particular order.

    `ConsoleWatchdog.finish` picks the most severe one that applies (see `SEVERITY`).
    """

    OK = "ok"
    PANIC = "panic"
    OOPS = "oops"
    BUG = "bug"
    WARNING = "warning"
    NO_BOOT = "no_boot"
    STALLED = "stalled"
    TIMEOUT = "timeout"


#: Most severe first. A splat outranks the time-out it probably caused (an Oops that hangs
#: the guest is reported as oops); a WARNING alone does not stop the run, so a hang or a
#: timeout outranks it.
SEVERITY: tuple[Verdict, ...] = (
    Verdict.PANIC,
    Verdict.OOPS,
    Verdict.BUG,
    Verdict.NO_BOOT,
    Verdict.STALLED,
    Verdict.TIMEOUT,
    Verdict.WARNING,
    Verdict.OK,
)


class BootStage(enum.IntEnum):
    """How far the guest got. Ordered: a later stage implies the earlier ones."""

    NONE = 0  #: nothing printed yet
    FIRMWARE = 1  #: some output (QEMU, boot loader, decompressor)
    KERNEL = 2  #: the kernel prints (``Linux version`` or a printk timestamp)
    INIT = 3  #: virtme's init runs
    GUEST = 4  #: our wrapper printed START_SENTINEL: the guest command runs
    EXITED = 5  #: our wrapper printed KMM-EXIT=<rc>


@dataclass(frozen=True)
class ConsoleLine:
    """One logical console line: a kernel (printk) line or a (re-joined) guest line."""

    text: str
    kernel: bool


@dataclass(frozen=True)
class Splat:
    """A kernel report seen on the console."""

    kind: Verdict  #: PANIC, OOPS, BUG or WARNING
    line: str  #: the console line, printk timestamp stripped
    case: str | None  #: the case running when it appeared (``# [RUN]`` marker), if any
    after_case: str | None  #: the last case that finished before it, if any
    at: float  #: the clock value passed to `ConsoleWatchdog.feed`


@dataclass
class ConsoleResult:
    """What the watchdog concluded; `lib.runner.vm.VmOutcome` is built from it."""

    verdict: Verdict
    reason: str  #: one human-readable line explaining the verdict
    stage: BootStage
    exit_code: int | None  #: from KMM-EXIT=<rc>, None if the sentinel never came
    running_case: str | None  #: the case that was running at the end (or at a panic)
    last_case: str | None  #: the last case that finished
    splats: list[Splat] = field(default_factory=list)
    tap_lines: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)  #: last console lines, as received
    killed: Verdict | None = None  #: why the host stopped the VM, None if it ended itself


# "[   12.345678] " (printk's %5lu.%06lu) with an optional caller id "[    T123] " after it.
_TS = r"\[\s*\d+\.\d{6}\](?:\[\s*[TC]\d+\])?\s?"
_TS_RE = re.compile(_TS)
_TS_START_RE = re.compile(r"^" + _TS)

_PANIC_END_RE = re.compile(r"^---\[ end Kernel panic")

_RUN_RE = re.compile(r"^#\s*\[\s*RUN\s*\]\s+(?P<name>\S.*?)\s*$")
_RESULT_RE = re.compile(
    r"^(?P<not>not )?ok(?:\s+(?P<num>\d+))?(?:\s+-)?(?:\s+(?P<name>[^#]*?))?\s*(?:#\s*(?P<dir>.*))?$"
)
_TAP_START_RE = re.compile(r"^(?:ok\b|not ok\b|#|TAP version |KTAP version |1\.\.\d)")
_EXIT_RE = re.compile(r"^" + re.escape(EXIT_SENTINEL) + r"(?P<rc>-?\d+)\s*$")
_INIT_RE = re.compile(r"virtme(?:-ng)?-init:|virtme-init:|virtme initramfs:")


def _strip_timestamp(line: str) -> str:
    return _TS_START_RE.sub("", line, count=1)


def classify_kernel_line(text: str) -> Verdict | None:
    """Splat kind of one kernel console line (timestamp optional), or None (lib.runner.splats'
    table)."""
    kind = splats.classify(_strip_timestamp(text))
    return None if kind is None else Verdict(kind.value)


def _looks_like_guest_line_start(text: str) -> bool:
    """True if `text` can start a guest line on its own (so it is not a continuation)."""
    return bool(_TAP_START_RE.match(text)) or text.startswith((START_SENTINEL, EXIT_SENTINEL))


class ConsoleWatchdog:
    """Incremental parser of a VM console; see the module docstring.

    Args:
        start: clock value when the VM was started.
        boot_timeout: seconds from `start` until the guest command must have started
            (START_SENTINEL seen), else NO_BOOT.
        stall_timeout: seconds without any new console line, once the guest command runs,
            before STALLED.
        vm_timeout: overall seconds from `start`, else TIMEOUT.
        panic_grace: seconds after a panic to keep collecting the trace before `check`
            asks for the VM to be stopped (with ``panic=-1`` QEMU exits by itself first).
        tail_lines: how many console lines `ConsoleResult.tail` keeps.
    """

    def __init__(
        self,
        *,
        start: float = 0.0,
        boot_timeout: float = 300.0,
        stall_timeout: float = 300.0,
        vm_timeout: float = 900.0,
        panic_grace: float = 10.0,
        tail_lines: int = 60,
    ) -> None:
        self.start = start
        self.boot_timeout = boot_timeout
        self.stall_timeout = stall_timeout
        self.vm_timeout = vm_timeout
        self.panic_grace = panic_grace
        self.stage = BootStage.NONE
        self.exit_code: int | None = None
        self.splats: list[Splat] = []
        self.tap_lines: list[str] = []
        self.running_case: str | None = None
        self.last_case: str | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._partial = ""  # bytes after the last newline
        self._pending: str | None = None  # last guest line, not final yet (may be continued)
        self._pending_cut = False  # kernel text came after _pending: a continuation may follow
        self._timestamps_seen = False
        self._last_progress = start
        self._panic_at: float | None = None
        self._panic_case: str | None = None
        self._panic_ended = False

    # ------------------------------------------------------------------ feeding

    def feed(self, text: str, now: float) -> list[ConsoleLine]:
        """Consume a chunk of console text; return the logical lines completed by it.

        Guest lines are returned once final, i.e. when the next guest line (or
        `finish`) shows they were not cut by interleaved kernel output; kernel lines are
        returned at once. ``\\r\\n``, ``\\r\\r\\n`` and bare ``\\n`` all end a line.
        """
        if not text:
            return []
        if self.stage == BootStage.NONE:
            self.stage = BootStage.FIRMWARE
        out: list[ConsoleLine] = []
        data = self._partial + text
        *complete, self._partial = data.split("\n")
        for raw in complete:
            self._physical_line(raw.replace("\r", ""), now, out)
        return out

    def _physical_line(self, line: str, now: float, out: list[ConsoleLine]) -> None:
        self._tail.append(line)
        self._last_progress = now
        match = _TS_RE.search(line)
        if match is None:
            if not self._timestamps_seen and classify_kernel_line(line) is not None:
                # A kernel without CONFIG_PRINTK_TIME: splats have no timestamp.
                self._kernel_line(line, now, out)
            else:
                self._guest_line(line, now, out)
            return
        self._timestamps_seen = True
        if match.start() > 0:
            # A guest line cut by a printk: the part before is a fragment to be continued.
            fragment = line[: match.start()]
            if self._continuable() and not _looks_like_guest_line_start(fragment):
                self._pending += fragment
            else:
                self._flush_pending(now, out)
                self._pending = fragment
                self._markers(fragment)
            self._pending_cut = True
            self._kernel_line(line[match.start() :], now, out)
            return
        self._kernel_line(line, now, out)

    def _kernel_line(self, line: str, now: float, out: list[ConsoleLine]) -> None:
        if self._pending is not None:
            self._pending_cut = True
        body = _strip_timestamp(line)
        if self.stage < BootStage.KERNEL:
            self.stage = BootStage.KERNEL
        if self.stage < BootStage.INIT and _INIT_RE.search(body):
            self.stage = BootStage.INIT
        kind = classify_kernel_line(body)
        if kind is not None:
            self.splats.append(Splat(kind, body, self.running_case, self.last_case, now))
            if kind is Verdict.PANIC and self._panic_at is None:
                self._panic_at = now
                self._panic_case = self.running_case
        elif _PANIC_END_RE.search(body):
            self._panic_ended = True
        out.append(ConsoleLine(body, kernel=True))

    def _guest_line(self, line: str, now: float, out: list[ConsoleLine]) -> None:
        if self.stage < BootStage.KERNEL and line.startswith("Linux version "):
            self.stage = BootStage.KERNEL
        if self.stage < BootStage.INIT and _INIT_RE.search(line):
            self.stage = BootStage.INIT
        if line and self._continuable() and not _looks_like_guest_line_start(line):
            self._pending += line
            self._pending_cut = False
            return
        self._flush_pending(now, out)
        self._pending = line
        self._pending_cut = False
        # Markers act at once (a hang right after "# [RUN] x" must name x); only the
        # reporting of the line waits for a possible continuation, and a re-joined line
        # is interpreted again when flushed.
        self._markers(line)

    def _continuable(self) -> bool:
        """Can the held guest line take a continuation?

        Only a TAP/sentinel line (the lines that matter) that kernel text has already cut;
        and only text that could not start a line of its own continues it. Other guest
        output (boot loader noise, free text) is never re-joined.
        """
        return self._pending is not None and self._pending_cut and _looks_like_guest_line_start(self._pending)

    def _markers(self, line: str) -> None:
        run = _RUN_RE.match(line)
        if run:
            self.running_case = run.group("name")
            return
        if line.startswith(START_SENTINEL):
            if self.stage < BootStage.GUEST:
                self.stage = BootStage.GUEST
            return
        exit_match = _EXIT_RE.match(line)
        if exit_match:
            self.exit_code = int(exit_match.group("rc"))
            self.stage = BootStage.EXITED
            return
        result = _RESULT_RE.match(line)
        if result and result.group("name"):
            self.last_case = result.group("name").strip()
            self.running_case = None

    def _flush_pending(self, now: float, out: list[ConsoleLine]) -> None:
        line = self._pending
        self._pending = None
        self._pending_cut = False
        if line is None:
            return
        self._markers(line)
        if _TAP_START_RE.match(line):
            self.tap_lines.append(line)
        out.append(ConsoleLine(line, kernel=False))

    # ------------------------------------------------------------------ deciding

    def check(self, now: float) -> Verdict | None:
        """Should the host stop the VM now? Returns the reason, or None to keep going."""
        if self._panic_at is not None and (self._panic_ended or now - self._panic_at >= self.panic_grace):
            return Verdict.PANIC
        if now - self.start >= self.vm_timeout:
            return Verdict.TIMEOUT
        if self.stage < BootStage.GUEST:
            if now - self.start >= self.boot_timeout:
                return Verdict.NO_BOOT
        elif self.stage < BootStage.EXITED and now - self._last_progress >= self.stall_timeout:
            return Verdict.STALLED
        return None

    def next_deadline(self, now: float) -> float:
        """Seconds until `check` could next return non-None, assuming no new output."""
        candidates = [self.start + self.vm_timeout]
        if self._panic_at is not None:
            candidates.append(self._panic_at + self.panic_grace)
        if self.stage < BootStage.GUEST:
            candidates.append(self.start + self.boot_timeout)
        elif self.stage < BootStage.EXITED:
            candidates.append(self._last_progress + self.stall_timeout)
        return max(0.0, min(candidates) - now)

    def flush(self, now: float) -> list[ConsoleLine]:
        """End of stream: complete a last line without newline and any held guest line."""
        out: list[ConsoleLine] = []
        if self._partial:
            partial, self._partial = self._partial, ""
            self._physical_line(partial.replace("\r", ""), now, out)
        self._flush_pending(now, out)
        return out

    def finish(self, now: float, *, killed: Verdict | None = None, eof: bool = True) -> ConsoleResult:
        """Close the stream (see `flush`) and conclude.

        Args:
            now: clock value at the end.
            killed: why the host stopped the VM (a `check` result), None if it ended itself.
            eof: flush the stream first (harmless if `flush` was already called).
        """
        if eof:
            self.flush(now)

        kinds = {s.kind for s in self.splats}
        candidates: dict[Verdict, str] = {}
        for splat in self.splats:
            candidates.setdefault(splat.kind, splat.line)
        if killed in (Verdict.NO_BOOT, Verdict.STALLED, Verdict.TIMEOUT):
            candidates[killed] = {
                Verdict.NO_BOOT: f"guest command did not start within {self.boot_timeout:g} s"
                f" (reached stage {self.stage.name.lower()})",
                Verdict.STALLED: f"no console output for {self.stall_timeout:g} s",
                Verdict.TIMEOUT: f"VM deadline of {self.vm_timeout:g} s reached",
            }[killed]
        elif self.stage < BootStage.GUEST and Verdict.PANIC not in kinds:
            candidates[Verdict.NO_BOOT] = (
                f"console ended before the guest command started (reached stage {self.stage.name.lower()})"
            )
        elif self.stage < BootStage.EXITED and not kinds & {Verdict.PANIC}:
            # The guest command started but its wrapper never reported: the VM died.
            candidates.setdefault(Verdict.STALLED, "console ended before the guest command exited")
        verdict = next((v for v in SEVERITY if v in candidates), Verdict.OK)
        reason = candidates.get(verdict, "guest command exited")
        running = self.running_case
        if verdict is Verdict.PANIC and self._panic_case is not None:
            running = self._panic_case
        if running is not None:
            reason = f"{reason} (while running {running})"
        return ConsoleResult(
            verdict=verdict,
            reason=reason,
            stage=self.stage,
            exit_code=self.exit_code,
            running_case=running,
            last_case=self.last_case,
            splats=list(self.splats),
            tap_lines=list(self.tap_lines),
            tail=list(self._tail),
            killed=killed,
        )


def parse_console(text: str, *, killed: Verdict | None = None) -> ConsoleResult:
    """Parse a whole recorded console at once (no time-outs); for tests and post-mortems."""
    watchdog = ConsoleWatchdog(boot_timeout=float("inf"), stall_timeout=float("inf"), vm_timeout=float("inf"))
    watchdog.feed(text, 0.0)
    return watchdog.finish(0.0, killed=killed)
