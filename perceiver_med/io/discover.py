"""A folder (or one file) -> scans, plus every file that was skipped and why.

Reads headers only. The registry of readers (formats.py) says which reader each file belongs to; each reader then makes
its scans from its files' headers (one per NIfTI or picture; DICOM series are assembled in dicom_series.py).
Only regular files are opened (a named pipe would block); an unreadable folder, a symbolic link
to a folder (not followed), a broken link or a file that vanishes is reported as skipped. Whatever
exception a reader raises on one file, that file becomes a skip with a one-line reason.
Shapes and spacings are in the display convention of every reader: (slices, rows, cols).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from perceiver_med.csvfiles import printable
from perceiver_med.errors import ScanError, UserError
from perceiver_med.io import formats
from perceiver_med.io.limits import os_reason
from perceiver_med.io.reader import Reader
from perceiver_med.io.scans import Scan, Skip, relative


@dataclass
class Discovery:
    root: Path
    scans: list[Scan]
    skipped: list[Skip]
    labels: dict[str, str] = field(default_factory=dict)  # filled by `inspect` when labels can be told
    patients: dict[str, str] = field(default_factory=dict)

    def records(self) -> list[dict]:
        """One row per file, as `inspect --out` writes them."""
        rows = []
        for scan in self.scans:
            for file in scan.files:
                rows.append({"file": relative(file, self.root), "scan": scan.id, "status": "ok", "reason": "",
                             "kind": scan.kind, "modality": scan.modality,
                             "shape": "x".join(str(s) for s in scan.shape)})
        for skip in self.skipped:
            rows.append({"file": relative(skip.file, self.root), "scan": "", "status": "skipped",
                         "reason": skip.reason, "kind": "", "modality": "", "shape": ""})
        return sorted(rows, key=lambda row: row["file"])


_FILE_KINDS = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def _regular(path: Path) -> str:
    """"" for a regular file (or a link to one); otherwise why it is not read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return os_reason(exc, path)
    if stat.S_ISREG(mode):
        return ""
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
    return f"not a regular file ({kind})"


def list_files(root: Path) -> tuple[list[Path], list[Skip]]:
    """Every regular file under `root`, in a stable order, and what was passed over with the reason."""
    if not os.path.lexists(root):
        raise UserError(f"{printable(root)} does not exist")
    if not root.is_dir():
        reason = _regular(root)
        if reason and not os.path.exists(root):
            raise UserError(f"{printable(root)}: {reason}")
        return ([], [Skip(root, reason)]) if reason else ([root], [])
    files: list[Path] = []
    skipped: list[Skip] = []

    def unreadable(exc: OSError) -> None:
        folder = Path(exc.filename) if exc.filename else root
        skipped.append(Skip(folder, f"folder not read: {os_reason(exc, folder)}"))

    for folder, dirs, names in os.walk(root, onerror=unreadable):
        dirs.sort()
        for name in list(dirs):
            if os.path.islink(os.path.join(folder, name)):
                dirs.remove(name)
                skipped.append(Skip(Path(folder) / name, "a symbolic link to a folder: not followed "
                                                         "(pass the folder itself to read it)"))
        for name in sorted(names):
            path = Path(folder) / name
            reason = _regular(path)
            if reason:
                skipped.append(Skip(path, reason))
            else:
                files.append(path)
    if not files and not skipped:
        raise UserError(f"{printable(root)} is empty: no files to read")
    if not files and any(skip.file == root for skip in skipped):
        raise UserError(f"{printable(root)}: {skipped[0].reason}")
    return files, skipped


def discover(root: Path | str) -> Discovery:
    """Find every scan under `root` (a folder or a single file)."""
    root = Path(root)
    files, skipped = list_files(root)
    base = root if root.is_dir() else root.parent
    headers: dict[Reader, list[tuple[Path, object]]] = {reader: [] for reader in formats.READERS}
    for file in files:
        try:
            reader, header = formats.read_header(file)
        except ScanError as exc:
            skipped.append(Skip(file, str(exc) or "unreadable"))
            continue
        headers[reader].append((file, header))
    scans: list[Scan] = []
    for reader, found in headers.items():
        made, passed_over = reader.scans(found, base)
        scans.extend(made)
        skipped.extend(passed_over)
    scans.sort(key=lambda scan: scan.id)
    skipped.sort(key=lambda skip: str(skip.file))
    return Discovery(root=base, scans=scans, skipped=skipped)


def discover_each(paths: list[Path]) -> Discovery:
    """The scans of several files or folders together (discover), rooted at the first."""
    found = discover(paths[0])
    for path in paths[1:]:
        more = discover(path)
        found.scans += more.scans
        found.skipped += more.skipped
    return found
