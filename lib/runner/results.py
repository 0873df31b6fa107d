"""Where a run's reports go: its own results folder, a writability probe, and ``latest``.

The one place that decides both (run_suite.py and the runner plugin call it):

* every run gets a folder of its own, ``<base>/<UTC second>-<release>``, created with a single
  mkdir; when another run took that name in the same second the next free ``.1``, ``.2``, ...
  suffix is taken, so two runs never share a folder;
* a run deletes only a folder it created itself (and only when it ended before its first case);
* ``latest`` is replaced atomically: a symlink under a temporary name, renamed over it.
"""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path

ATTEMPTS = 1000


class ResultsError(Exception):
    """The results folder cannot be made or written (the run stops before its first case)."""


def safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def default_base(root: Path) -> Path:
    """``$KMM_RESULTS_BASE`` if set, else ``results/`` beside the suite, else
    ``$TMPDIR/kmm-results`` when that cannot be written."""
    if os.environ.get("KMM_RESULTS_BASE"):
        return Path(os.environ["KMM_RESULTS_BASE"])
    base = root / "results"
    try:
        base.mkdir(exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return Path(os.environ.get("TMPDIR", "/tmp")) / "kmm-results"


def new_run_dir(base: Path, label: str, now: float | None = None) -> Path:
    """Create and return a folder no other run has: ``base/<stamp>-<label>[.N]``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return own_dir(base, f"{stamp}-{safe_label(label)}")


def own_dir(base: Path, stem: str) -> Path:
    """Create and return ``base/stem``, or ``base/stem.N`` when that exists: a folder of this
    run's own, made with one mkdir (never a folder another run made, never deleted)."""
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsError(f"cannot create results folder {base}: {e.strerror}") from None
    for n in range(ATTEMPTS):
        path = base / (stem if n == 0 else f"{stem}.{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise ResultsError(f"cannot create results folder {path}: {e.strerror}") from None
        return path
    raise ResultsError(f"cannot create results folder {base / stem}: {ATTEMPTS} folders of that name exist")


def probe_writable(folder: Path, size: int = 16384) -> None:
    """Write, sync and remove a file of ``size`` bytes in ``folder``: a read-only, immutable or
    full folder raises ResultsError naming the reason, before the run writes anything there."""
    probe = folder / f".kmm-write-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        raise ResultsError(f"results folder {folder} is not writable: {e.strerror}") from None
    try:
        data = b"\0" * size
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError as e:
        raise ResultsError(f"results folder {folder} is not writable: {e.strerror}") from None
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass


def point_latest(run_dir: Path) -> None:
    """Make ``<parent>/latest`` point at ``run_dir``, atomically (readers never miss it)."""
    parent = run_dir.parent
    tmp = parent / f".latest.{os.getpid()}"
    try:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, parent / "latest")
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EISDIR):
            raise
