"""Check helpers that say where and why a check failed (in the style of ksft.py's ksft_eq).

Each raises AssertionError with a one-line message naming the check, the expected and the
observed value; the case's TAP line carries that message.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
from collections.abc import Iterator


class CannotTest(Exception):
    """The case could not reach the point where it judges the kernel, for a reason that is no
    kernel guarantee (a starved kernel thread that made no progress, a harness limit).

    The isolation layer reports it as an ``error`` verdict whose message starts with
    ``cannot test:``; ``--bisect`` maps such a run to 125 unless a case failed.
    """


CANNOT_TEST_PREFIX = "cannot test: "


def eq(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def true(cond: object, what: str) -> None:
    if not cond:
        raise AssertionError(f"{what}: not true")


def false(cond: object, what: str) -> None:
    if cond:
        raise AssertionError(f"{what}: unexpectedly true")


def ge(actual: int | float, minimum: int | float, what: str) -> None:
    if not actual >= minimum:
        raise AssertionError(f"{what}: expected at least {minimum}, got {actual}")


def mask_has(mask: int, bits: int, what: str) -> None:
    missing = int(bits) & ~int(mask)
    if missing:
        raise AssertionError(f"{what}: bits {missing:#x} missing from {int(mask):#x}")


def mask_lacks(mask: int, bits: int, what: str) -> None:
    present = int(bits) & int(mask)
    if present:
        raise AssertionError(f"{what}: bits {present:#x} unexpectedly set in {int(mask):#x}")


def errname(e: int | None) -> str:
    return f"{_errno.errorcode.get(e, e)}" if e is not None else "success"


@contextlib.contextmanager
def raises_errno(expected: int | tuple[int, ...], what: str) -> Iterator[list[OSError]]:
    """The block must fail with OSError of errno ``expected``; the error is appended to the list."""
    allowed = expected if isinstance(expected, tuple) else (expected,)
    caught: list[OSError] = []
    try:
        yield caught
    except OSError as e:
        if e.errno not in allowed:
            raise AssertionError(
                f"{what}: expected {'/'.join(errname(a) for a in allowed)}, got {errname(e.errno)} ({e})"
            ) from None
        caught.append(e)
        return
    raise AssertionError(f"{what}: expected {'/'.join(errname(a) for a in allowed)}, but it succeeded")


def strerror(e: int) -> str:
    return f"{errname(e)} ({os.strerror(e)})"


# ---------------------------------------------------------------------------------------
# notes: a case says what it is doing, so a TIMEOUT can say what it was waiting on.
# The isolation layer (lib/runner/isolation.py) sets _note_fd in the case's process.

_note_fd: int | None = None


def note(text: str) -> None:
    """Record what the case is about to do (reported if the case times out)."""
    if _note_fd is not None:
        _send(_note_fd, {"note": text})


DIAG_PREFIX = "diag: "


def diag(text: str) -> None:
    """A diagnostic kept with the case's result whatever the verdict (the Outcome's details:
    JUnit body and summary.json), e.g. which of two documented kernel behaviours was seen."""
    note(DIAG_PREFIX + text)


def _send(fd: int, obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]
