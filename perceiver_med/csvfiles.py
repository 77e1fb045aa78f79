r"""Every CSV the tool reads or writes: one encoding, one escaping rule, one-line errors.

- Written as valid UTF-8, always: a byte of a file name that is not UTF-8 (Linux allows any bytes; shared
  drives hold such names) is written as the four characters \xNN, as the tool prints it, so pandas and
  spreadsheets open every file. Path cells and patient ids read \xNN (NN from 80 to FF) back as that byte, so
  `train` finds the file again; a name holding a literal backslash, x and two such hex digits would be misread
  (no real file name seen holds one).
- Read as UTF-8 with an optional byte-order mark (Excel's "CSV UTF-8"), with `surrogateescape`: a path cell
  or patient id written as raw bytes by another tool keeps them; other text (labels) must be UTF-8.
- Cells that a spreadsheet would run as a formula (starting with = + - @, tab or CR) are written
  with a leading single quote, the OWASP advice, and the quote is removed again on reading.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from perceiver_med.errors import UserError
from perceiver_med.files import atomic_path

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


def printable(text: object) -> str:
    """`text` safe to print: bytes that are not UTF-8 shown as \\xNN."""
    try:
        return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no decoding produced
        return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _looks_like_formula(text: str) -> bool:
    # quotes are looked through so that escaping is reversible: "'=x" is written "''=x"
    return text.lstrip("'")[:1] in FORMULA_STARTS


def escape_cell(value: object) -> object:
    """A cell as written: bytes that are not UTF-8 as \\xNN; text a spreadsheet would run as a formula gets a
    leading quote."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        value = printable(value)
        if _looks_like_formula(value):
            return "'" + value
    return value


def as_written(text: str) -> str | int | float:
    """A cell read from one file, to write into another unchanged: text that is a number as Python writes it
    ("-45.3", "-2") goes out as that number, so that it is not formula-escaped; any other text as it is."""
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        return number if repr(number) == text else text
    return text


_BYTE_ESCAPE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")


def _file_name_bytes(text: str) -> str:
    """The inverse of printable for the bytes of a file name: \\xNN (80 to FF) back to the byte it stands for."""
    return _BYTE_ESCAPE.sub(lambda match: chr(0xDC00 + int(match.group(1), 16)), text)


def unescape_cell(text: str) -> str:
    """The inverse of escape_cell for a cell read back as text."""
    return text[1:] if text.startswith("'") and _looks_like_formula(text[1:]) else text


def write_csv(path: Path | str, columns: list[str], rows: Iterable[list]) -> None:
    """Write a CSV atomically: it appears at `path` only when complete."""
    with atomic_path(path) as temp:
        with open(temp, "w", newline="", **_ENCODING) as handle:
            writer = csv.writer(handle, lineterminator="\n")  # \r\n would break line-based tools (sed, grep $)
            writer.writerow([escape_cell(column) for column in columns])
            for row in rows:
                writer.writerow([escape_cell(value) for value in row])


@dataclass
class CsvRow:
    """One record of a CSV file, cells unescaped; `line` is where the record ends in the file."""

    source: Path
    line: int
    cells: dict[str, str]

    @property
    def where(self) -> str:
        return f"{printable(self.source)}:{self.line}"

    def error(self, message: str) -> UserError:
        return UserError(f"{self.where}: {message}")

    def text(self, column: str, required: bool = False, any_bytes: bool = False) -> str:
        """A stripped text cell; refused when empty and required, or not UTF-8 (unless `any_bytes`:
        an identifier taken from a file name, such as a patient id, keeps the name's bytes)."""
        value = self.cells.get(column, "").strip()
        if any_bytes:
            return self._required(column, _file_name_bytes(value), required)
        if value != printable(value):
            raise self.error(f"the {column} '{printable(value)}' is not UTF-8 text: save the file as UTF-8")
        return self._required(column, value, required)

    def _required(self, column: str, value: str, required: bool) -> str:
        if required and not value:
            raise self.error(f"empty {column}")
        return value

    def path(self, column: str = "path") -> str:
        """A path cell as written, with the bytes of a name that is not UTF-8 (written \\xNN, or raw)."""
        value = self.cells.get(column, "")
        if not value.strip():
            raise self.error(f"empty {column}")
        return _file_name_bytes(value)

    def integer(self, column: str) -> int | None:
        """A non-negative whole number (4 or 4.0), or None for an empty or absent cell."""
        value = self.text(column)
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None or not number.is_integer() or number < 0:
            raise self.error(f"{column} must be a whole number >= 0, not {value!r}")
        return int(number)


@dataclass
class CsvTable:
    source: Path
    columns: list[str]
    rows: list[CsvRow]


def read_csv(path: Path | str, kind: str, required: Iterable[str]) -> CsvTable:
    """Read a CSV with a header; any problem is a one-line UserError naming the file (and line).

    `kind` names the file in messages ("splits file", "labels file").
    """
    path = Path(path)
    required = list(required)
    if path.is_dir():
        raise UserError(f"{kind} {printable(path)} is a folder, not a CSV file")
    if not path.is_file():
        raise UserError(f"{kind} {printable(path)} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.reader(handle)
            try:
                header = [unescape_cell(name).strip() for name in next(reader, [])]
                missing = [name for name in required if name not in header]
                if missing:
                    found = ",".join(printable(name) for name in header) or "nothing"
                    separator = next((sep for sep in ";\t|" if len(header) == 1 and sep in header[0]), None)
                    hint = (f"; its columns are separated by {separator!r}: save it as comma-separated values"
                            if separator else "")
                    raise UserError(f"{printable(path)} is not a {kind}: it needs the columns {','.join(required)} "
                                    f"(found: {found}){hint}")
                rows = []
                for record in reader:
                    if not any(cell.strip() for cell in record):
                        continue
                    cells = {name: unescape_cell(cell) for name, cell in zip(header, record) if name}
                    rows.append(CsvRow(path, reader.line_num, cells))
            except csv.Error as exc:  # an oversized field, a stray quote at the end of the file
                raise UserError(f"{printable(path)}:{reader.line_num}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise UserError(f"cannot read {kind} {printable(path)}: {exc.strerror or exc}") from None
    return CsvTable(path, header, rows)
