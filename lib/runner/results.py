"""Where a run's reports go: its own results folder, a writability probe, and ``latest``.

The one place that decides them (run_suite.py, the runner plugin and lib.runner.vmrun call it:
:func:`open_run` for a run's folder, :func:`run_dir` for a folder of its own, :meth:`RunFolder.finish`
and :func:`finish` for ``latest``):

* every run gets a folder of its own, ``<base>/<UTC second>-<release>``, created with a single
  mkdir; when another run took that name in the same second the next free ``.1``, ``.2``, ...
  suffix is taken, so two runs never share a folder;
* a run deletes only a folder it created itself (and only when it ended before its first case);
* ``latest`` is replaced atomically: a symlink under a temporary name, renamed over it; it
  follows only a folder under :func:`default_base` (for a run on this machine, only one this
  module chose, never a ``--results`` one), and only for a run that wrote its reports.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from dataclasses import dataclass
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


def kernel_dir(base: Path, index: int, label: str) -> Path:
    """The folder of a ``--kernels`` series' kernel number ``index`` (from 0): ``base/NN-<label>``
    (spaces as ``-``), one of this run's own (:func:`own_dir`: an earlier series' folder of that
    name is kept)."""
    return own_dir(base, f"{index:02d}-{label.replace(' ', '-')}")


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


def run_dir(given: str | Path | None, root: Path, label: str) -> Path:
    """A run's folder: ``given`` (the command line's ``--results``) as it is, else a new folder
    of the run's own under :func:`default_base` named after ``label``."""
    return Path(given) if given else new_run_dir(default_base(root), label)


def chosen_here(folder: Path, root: Path) -> bool:
    """Is ``folder`` one this module chose (under :func:`default_base`), so ``latest`` follows it?"""
    return folder.parent == default_base(root)


def finish(folder: Path, root: Path, reported: bool = True) -> None:
    """The run in ``folder`` ended: ``latest`` moves to it when the folder is one of ours and the
    run wrote its reports."""
    if reported and chosen_here(folder, root):
        point_latest(folder)


@dataclass
class RunFolder:
    """A run's results folder, and whether this run created it (then only it may remove it)."""

    path: Path
    created: bool
    latest: bool  #: a folder this module chose: ``latest`` follows it

    def discard(self) -> None:
        """The run ended before its first case: remove the folder if this run made it."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)

    def finish(self, reported: bool) -> None:
        """The run ended; ``reported``: it wrote its reports (then ``latest`` may move here)."""
        if reported and self.latest:
            point_latest(self.path)


def open_run(given: str | None, root: Path, label: str) -> RunFolder:
    """The folder of a run on this machine, created and probed for writes (ResultsError says
    why it cannot be used): ``given`` (made absolute), else a new one under :func:`default_base`."""
    if given:
        path = Path(given).resolve()
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ResultsError(f"cannot create results folder {given}: {e.strerror}") from None
    else:
        path, created = run_dir(None, root, label), True
    probe_writable(path)
    return RunFolder(path, created, latest=not given)
