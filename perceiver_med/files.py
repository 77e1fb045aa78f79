"""Writing outputs safely: to a temporary name in the same folder, then renamed into place; run directory locks."""
from __future__ import annotations

import errno
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from perceiver_med.errors import UserError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Outputs get the mode any other program's files get (mkstemp's 0600 would hide them from a shared group).
FILE_MODE = 0o666 & ~_read_umask()


def _writing_error(target: Path, exc: OSError) -> UserError:
    reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or type(exc).__name__).lower()
    return UserError(f"cannot write {target}: {reason}")


@contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    except OSError as exc:
        raise _writing_error(target, exc) from None
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, FILE_MODE)
        os.replace(temp, target)
    except OSError as exc:
        raise _writing_error(target, exc) from None
    finally:
        if temp.exists():
            temp.unlink()


def atomic_text(target: Path | str, write: Callable) -> None:
    """Call write(handle) on a text file that appears at `target` only when complete."""
    with atomic_path(target) as temp:
        with open(temp, "w", newline="") as handle:
            write(handle)


def refuse_inside_runs(output: Path | str) -> None:
    """Nothing is written inside a run directory (run.rundir.is_run_directory): a run holds only what training
    wrote, so its digests and its frozen splits stay true."""
    from perceiver_med.run.rundir import is_run_directory

    for folder in Path(output).resolve().parents:
        if is_run_directory(folder):
            raise UserError(f"{output} is inside the run directory {folder}: write outputs elsewhere")


def check_new_output(path: Path | str, overwrite: bool = False) -> None:
    """Before any work: refuse to replace an existing output unasked, or to write inside a run directory, and
    make sure the output's folder is writable."""
    path = Path(path)
    refuse_inside_runs(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists: choose another name, or add --overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass  # the folder takes new files
    except OSError as exc:
        raise _writing_error(path, exc) from None


def refuse_inside(output: Path | str, *inputs: Path | str) -> None:
    """Outputs never go inside an input folder: a second run would read them as data."""
    out = Path(output).resolve()
    for folder in inputs:
        folder = Path(folder).resolve()
        if folder.is_file():
            folder = folder.parent
        if out == folder or folder in out.parents:
            raise UserError(f"{output} is inside the input folder {folder}: write outputs elsewhere")


LOCK_NAME = ".lock"


class RunLock:
    """One writer per run directory: `.lock` holds the owner's host and pid; a dead owner's lock is taken over."""

    def __init__(self, run: Path | str, enabled: bool = True):
        self.run, self.enabled, self.created = Path(run), enabled, False
        self.path = self.run / LOCK_NAME

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        refuse_inside_runs(self.run)
        self.created = not self.run.exists()
        try:
            self.run.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _writing_error(self.run, exc) from None
        for _attempt in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            except FileExistsError:
                owner = self._live_owner()
                if owner:
                    raise UserError(f"{self.run} is in use by another perceiver-med ({owner}): wait for it to "
                                    "finish, or choose another --out") from None
                self.path.unlink(missing_ok=True)  # left by a process that no longer runs
                continue
            except OSError as exc:
                raise _writing_error(self.path, exc) from None
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            return self
        raise UserError(f"{self.run} is being locked by another process: try again")

    def _live_owner(self) -> str:
        try:
            host, pid = self.path.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            return ""  # unreadable or half-written: treated as stale
        if host != socket.gethostname():
            return f"pid {pid} on {host}"  # cannot tell whether it runs: assume it does
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass
        return f"pid {pid}"

    def __exit__(self, *exc_info) -> None:
        if not self.enabled:
            return
        self.path.unlink(missing_ok=True)
        if self.created and self.run.is_dir() and not any(self.run.iterdir()):
            self.run.rmdir()  # a run that failed before writing anything leaves nothing behind


def holds_files(folder: Path) -> bool:
    """Whether a folder holds anything besides a lock."""
    return folder.exists() and (not folder.is_dir() or any(p.name != LOCK_NAME for p in folder.iterdir()))


def remove_stale_temporaries(run: Path) -> None:
    """Temporary files of writes that were killed midway (`.<name>.<random>.<suffix>`); call under RunLock."""
    if not run.is_dir():
        return
    for path in run.iterdir():
        if path.name.startswith(".") and path.name != LOCK_NAME and path.is_file():
            path.unlink(missing_ok=True)
