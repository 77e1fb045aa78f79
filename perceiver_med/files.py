"""Writing outputs safely: to a temporary name in the same folder, then renamed into place; file digests."""
from __future__ import annotations

import errno
import hashlib
import os
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
        raise writing_error(target, exc) from None
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, FILE_MODE)
        os.replace(temp, target)
    except OSError as exc:
        raise writing_error(target, exc) from None
    finally:
        if temp.exists():
            temp.unlink()


def atomic_text(target: Path | str, write: Callable) -> None:
    """Call write(handle) on a text file that appears at `target` only when complete."""
    with atomic_path(target) as temp:
        with open(temp, "w", newline="") as handle:
            write(handle)


def refuse_inside(output: Path | str, *inputs: Path | str) -> None:
    """Outputs never go inside an input folder: a second run would read them as data."""
    out = Path(output).resolve()
    for folder in inputs:
        folder = Path(folder).resolve()
        if folder.is_file():
            folder = folder.parent
        if out == folder or folder in out.parents:
            raise UserError(f"{output} is inside the input folder {folder}: write outputs elsewhere")


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
