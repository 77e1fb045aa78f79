"""Writing outputs safely: to a temporary name in the same folder, then renamed into place; file digests."""
from __future__ import annotations

import errno
import hashlib
import os
import stat
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


def writing_error(target: Path, exc: OSError) -> UserError:
    if exc.errno == errno.ENAMETOOLONG:
        reason = f"the file system refuses a name this long ({len(os.fsencode(Path(target).name))} bytes)"
    else:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or type(exc).__name__).lower()
    return UserError(f"cannot write {target}: {reason}")


NAME_MAX = 255  # bytes in one file name: the limit of the usual Linux, macOS and Windows file systems


def check_name(target: Path | str) -> None:
    """UserError for an output name longer than file systems take, before any work (not at the final rename)."""
    if len(os.fsencode(Path(target).name)) > NAME_MAX:
        raise writing_error(Path(target), OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)))


# Outputs a command found absent when it started (see expect_new): written only if they are still absent, so that of
# two commands writing the same new file, the second is refused instead of replacing the first one's result.
_NEW_OUTPUTS: set[str] = set()


def expect_new(target: Path | str, new: bool = True) -> None:
    """Record whether `target` was absent when this command checked its outputs: `atomic_path` then creates it
    without replacing whatever another writer put there in the meantime (`new`), or replaces it (not `new`)."""
    if new:
        _NEW_OUTPUTS.add(os.path.abspath(target))
    else:
        _NEW_OUTPUTS.discard(os.path.abspath(target))


def not_regular(target: Path | str) -> str:
    """What an existing `target` is when it is not a regular file (or a link to one): "a named pipe (FIFO)", "a
    device"...; "" for a regular file or nothing. Only regular files are ever replaced by an output."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return ""
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "" if stat.S_ISREG(mode) else "not a regular file"


@contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Only a regular file is replaced; an output that `expect_new` recorded is created only if it is still absent.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # the temporary name fits wherever the target's does: a name near the 255-byte limit is not made longer
        handle, name = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=suffix or ".tmp", dir=target.parent)
    except OSError as exc:
        raise writing_error(target, exc) from None
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, FILE_MODE)
        _put(temp, target)
    except OSError as exc:
        raise writing_error(target, exc) from None
    finally:
        if temp.exists():
            temp.unlink()


def _put(temp: Path, target: Path) -> None:
    what = not_regular(target)
    if what:
        raise UserError(f"{target} is {what}, not a regular file: it is not replaced (give a file name)")
    key = os.path.abspath(target)
    if key not in _NEW_OUTPUTS:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)  # fails if the name exists: exactly one of two writers creates it
    except FileExistsError:
        raise UserError(f"{target} was created by another writer while this command ran (the same --out given "
                        "twice?): this result is not written; choose another name") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(target):  # a file system without hard links: checked, then renamed
            raise UserError(f"{target} was created by another writer while this command ran: this result is not "
                            "written; choose another name") from None
        os.replace(temp, target)
    _NEW_OUTPUTS.discard(key)  # it is this command's own file now: a later write of it replaces it


def atomic_text(target: Path | str, write: Callable) -> None:
    """Call write(handle) on a text file that appears at `target` only when complete."""
    with atomic_path(target) as temp:
        with open(temp, "w", newline="") as handle:
            write(handle)


def refuse_inside(output: Path | str, *inputs: Path | str) -> None:
    """Outputs never go inside an input folder: a second run would read them as data. An input that is one file
    is only never replaced: the folder holding it was not given as data (`predict RUN scan.png --out p.csv` in
    the scan's folder is fine)."""
    from perceiver_med.csvfiles import printable

    out = Path(output).resolve()
    for given in inputs:
        given = Path(given).resolve()
        if given.is_file():
            if out == given:
                raise UserError(f"{printable(output)} is the input scan itself: write outputs elsewhere")
        elif out == given or given in out.parents:
            raise UserError(f"{printable(output)} is inside the input folder {printable(given)}: write outputs "
                            "elsewhere")


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
