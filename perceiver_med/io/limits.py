"""How big a scan may be before it is decoded, and one-line reasons from any exception.

The voxel budget is a runtime setting of this process: `voxel_budget(n)` sets it for a block (a library entry
function applies its request's budget so), and the preprocessing pool hands it to each worker process it starts
(inputs/cache.py). Every reader checks a scan's size from its header against the budget BEFORE decoding
anything, so a decompression bomb costs a header read, never its size. PERCEIVER_MED_MAX_VOXELS is the command
line's default for --max-voxels, read by the command line alone (parse_max_voxels).
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

from perceiver_med.errors import ScanError, UserError

ENV = "PERCEIVER_MED_MAX_VOXELS"
# 2^28 voxels: a 512 x 512 x 1024 CT fits (the usual 512 x 512 x 600 is 157M), 1 GiB as float32.
DEFAULT_MAX_VOXELS = 1 << 28
# One image plane (a 2D image, or one slice or frame of a volume) is decoded and preprocessed whole, at
# about 16 bytes a pixel, while a model input reads only a few slices of a volume: a plane may hold a
# quarter of the budget, 2^26 = 8192 x 8192 pixels by default (the largest mammograms are about 30M).
PLANE_SHARE = 4


_budget = DEFAULT_MAX_VOXELS


def max_voxels() -> int:
    """The voxel budget per scan in this process: the one voxel_budget set, else 2^28."""
    return _budget


def set_max_voxels(budget: int | None) -> None:
    """Make `budget` this process's voxel budget (None: the built-in one); a worker's initializer calls it."""
    global _budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
        raise ValueError(f"the voxel budget must be a positive whole number, not {budget!r}")
    _budget = DEFAULT_MAX_VOXELS if budget is None else budget


@contextmanager
def voxel_budget(budget: int | None):
    """Read scans with `budget` voxels at most inside the block (None: leave the budget as it is)."""
    before = _budget
    if budget is not None:
        set_max_voxels(budget)
    try:
        yield
    finally:
        set_max_voxels(before)


def parse_max_voxels(text: str | None) -> int | None:
    """The budget PERCEIVER_MED_MAX_VOXELS holds (None where it is unset or blank). Raises UserError naming the
    variable if it is not a positive whole number."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = float("nan")
        value = int(number) if number == number and number == int(number) else 0
    if value <= 0:
        raise UserError(f"{ENV} must be a positive whole number of voxels, got {text!r}")
    return value


def check_size(dims: tuple[int, ...], planes: int = 1, what: str = "") -> None:
    """Refuse a scan whose image planes (`dims` = rows, cols) times `planes` exceed the budget.

    Raises ScanError naming the size, the budget and how to raise it.
    """
    rows_cols = 1
    for d in dims:
        rows_cols *= int(d)
    total = rows_cols * max(int(planes), 1)
    budget = max_voxels()
    size = "x".join(str(int(d)) for d in ((planes, *dims) if planes > 1 else dims))
    what = f"{what} " if what else ""
    if rows_cols > budget // PLANE_SHARE:
        raise ScanError(f"{what}{size}: one image plane of {rows_cols:,} pixels is over the limit of "
                        f"{budget // PLANE_SHARE:,} (a quarter of the voxel budget of {budget:,}), so it is not "
                        f"decoded; to read it, set {ENV} (or --max-voxels) to at least "
                        f"{rows_cols * PLANE_SHARE:,}")
    if total > budget:
        raise ScanError(f"{what}{size}: {total:,} voxels, over the budget of {budget:,} voxels per scan, so it "
                        f"is not decoded; to read it, set {ENV} (or --max-voxels) to at least {total:,}")


_EMPTY_MESSAGES = {MemoryError: "out of memory", RecursionError: "structure nested too deeply",
                   EOFError: "file ends early", KeyError: "a required field is missing"}


def describe(exc: BaseException, limit: int = 200) -> str:
    """One line about an exception, never empty, never cut inside a word."""
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and exc.args:
        text = f"missing {exc.args[0]!r}"
    if not text:
        for kind, message in _EMPTY_MESSAGES.items():
            if isinstance(exc, kind):
                return message
        return type(exc).__name__
    return shorten(text, limit)


def shorten(text: str, limit: int = 200) -> str:
    """`text` on one line, cut at the last whole word before `limit` characters (with an ellipsis)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:-(")
    return (cut or text[:limit]) + "…"


def file_access_error(exc: BaseException) -> bool:
    """An OSError about reaching the file (gone, permission, link loop), not about its content."""
    return isinstance(exc, (FileNotFoundError, PermissionError)) or (isinstance(exc, OSError) and exc.errno is not None)


def unexpected(exc: BaseException, reader: str) -> str:
    """The reason for an exception a reader did not expect (a bug in it, or a file no one foresaw)."""
    if isinstance(exc, MemoryError):
        return f"not enough memory to read this {reader} file"
    return f"the {reader} reader failed on this file ({type(exc).__name__}: {describe(exc, 160)})"


def os_reason(exc: OSError, path: Path) -> str:
    """Why a file could not be reached, in a few words (a broken link, a loop, gone, permission denied)."""
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop: it never reaches a file"
    if exc.errno == errno.ENOENT or isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return "a broken symbolic link: its target does not exist"
        return "vanished before it could be read"
    if exc.errno in (errno.EACCES, errno.EPERM) or isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot be read: {exc.strerror or describe(exc)}"


# A request's memory (a model's weights and optimiser state, a stack of model inputs) is estimated before it is
# allocated and refused beyond this share of the machine's memory: a size option far too large is then one line
# naming its size, not an allocation traceback or a machine swapping for minutes.
MEMORY_SHARE = 2


def memory_budget() -> int:
    """Bytes one request may take: half the machine's physical memory (16 GiB where it cannot be told)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 16 << 30
    return max(int(total) // MEMORY_SHARE, 1 << 30)


def over_memory(needed: int, what: str) -> str:
    """Why a request of `needed` bytes is refused, naming `what` it is; "" when it fits the memory budget."""
    budget = memory_budget()
    if needed <= budget:
        return ""
    return (f"{what} would take about {_bytes(needed)}, more than the {_bytes(budget)} allowed (half of this "
            "machine's memory)")


def _bytes(count: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:,} bytes"
