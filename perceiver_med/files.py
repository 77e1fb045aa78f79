"""Writing outputs safely: to a temporary name in the same folder, then renamed into place."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from perceiver_med.errors import UserError


@contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.replace(temp, target)
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
