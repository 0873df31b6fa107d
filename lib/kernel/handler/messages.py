"""The serve loop's view of uffd messages: raw message words, the flag bits looked up once, and the
log entries built from them (rendered to text only when the statistics are read).

A message is handled as its four words (event, three argument words: lib.kernel.uffd.MSG_WORDS),
not as a :class:`lib.kernel.uffd.Msg`: the fault path never builds an object per fault
(bench/fault_service.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable

from lib.kernel import abi
from lib.kernel.uffd import Msg

# enum members looked up once (an Enum attribute access costs more than the int compare)
PAGEFAULT, REMOVE = abi.Event.PAGEFAULT, abi.Event.REMOVE
PAGEFAULT_NR, REMOVE_NR = int(PAGEFAULT), int(REMOVE)
PF_WRITE, PF_WP, PF_MINOR = int(abi.PagefaultFlag.WRITE), int(abi.PagefaultFlag.WP), int(abi.PagefaultFlag.MINOR)
COPY_DONTWAKE, ZEROPAGE_DONTWAKE = int(abi.CopyMode.DONTWAKE), abi.ZEROPAGE_MODE_DONTWAKE
U32_MASK = 0xFFFFFFFF
BATCH = 64  # messages per read(2)

# The fault path logs raw message words, rendered to text by FaultServer.snapshot():
# (READ, [words, ...]) for a read(2), (DISPATCHED, words) for a fault handed to resolution.
READ, DISPATCHED = "read", "dispatched"
Words = tuple[int, int, int, int]  # one uffd_msg as (event, three argument words): lib.kernel.uffd.MSG_WORDS
Resolver = Callable[[Words], None]


def render_log(entry: str | tuple) -> str:
    """A log entry as text: a str as it is, a (READ, words) or (DISPATCHED, words) entry
    rendered from the message words."""
    if isinstance(entry, str):
        return entry
    kind, payload = entry
    if kind is READ:
        return "read " + ", ".join(str(Msg._from_words(*w)) for w in payload)
    return f"dispatched {Msg._from_words(*payload)}"


def fault_record(words: Words) -> dict:
    """Stats.faults' record of a page-fault message."""
    return {"address": words[2], "flags": words[1], "ptid": words[3] & U32_MASK}

