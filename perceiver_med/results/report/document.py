"""A small document model (sections of paragraphs, tables, figures and a flow diagram) and its two renderings:
one self-contained HTML page (images inlined as data: URIs, no script, no external resource) and Markdown
(images as files in a folder beside it).

Every text from a run (class names, reasons, config values) passes through html.escape in the HTML, and
through _md in the Markdown, where a table cell must not break the table.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

PLACEHOLDER = "[to be completed by the authors]"


@dataclass
class Cell:
    text: str
    id: str = ""  # an anchor for readers and for tests that check a number against its source


@dataclass
class Table:
    header: list[str]
    rows: list[list]  # str or Cell
    caption: str = ""


@dataclass
class Paragraph:
    text: str


@dataclass
class Image:
    file: str
    caption: str


@dataclass
class Box:
    title: str
    lines: list[Cell]  # a line's id marks the number in it
    kind: str = "main"  # "main", "excluded" or "split"


@dataclass
class Flow:
    rows: list[list[Box]]  # drawn top to bottom, each row's boxes side by side


@dataclass
class Section:
    anchor: str
    title: str
    blocks: list = field(default_factory=list)


def _cell(value) -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1.5em;color:#1b1f23;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums}caption{text-align:left;
font-style:italic;padding:.2em 0}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top;
max-width:520px}figure img{max-width:100%;border:1px solid #eaeef2}figcaption{font-size:.85em;color:#57606a}
.flow{display:flex;flex-direction:column;align-items:center;gap:.3em}.flow-row{display:flex;gap:1.2em;
align-items:stretch;justify-content:center}.box{border:2px solid #0969da;border-radius:6px;padding:.4em .8em;
min-width:12em;background:#f6f8fa}.box.excluded{border-color:#bf8700;background:#fff8e5}.box.split{
border-color:#1a7f37;background:#eefbf1}.box h4{margin:0 0 .2em;font-size:.95em}.box p{margin:0;
font-size:.88em}.arrow{font-size:1.4em;color:#57606a;line-height:1}.placeholder{color:#a40e26;font-weight:600}
code{font-size:.9em}
"""


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _html_text(text: str) -> str:
    """Escaped text, the placeholder marked so it stands out in print."""
    escaped = _e(text)
    return escaped.replace(_e(PLACEHOLDER), f'<span class="placeholder">{_e(PLACEHOLDER)}</span>')


def _html_block(block, images: Path) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_html_text(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_e(h)}</th>" for h in block.header)
        body = []
        for row in block.rows:
            cells = []
            for value in map(_cell, row):
                anchor = f' id="{_e(value.id)}"' if value.id else ""
                cells.append(f"<td{anchor}>{_html_text(value.text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        caption = f"<caption>{_e(block.caption)}</caption>" if block.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if isinstance(block, Image):
        data = base64.b64encode((images / block.file).read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(block.caption)}">'
                f"<figcaption>{_e(block.caption)}</figcaption></figure>")
    if isinstance(block, Flow):
        rows = []
        for row in block.rows:
            boxes = []
            for box in row:
                lines = "".join(
                    f'<p><span id="{_e(line.id)}">{_e(line.text)}</span></p>' if line.id else f"<p>{_e(line.text)}</p>"
                    for line in box.lines)
                boxes.append(f'<div class="box {_e(box.kind)}"><h4>{_e(box.title)}</h4>{lines}</div>')
            rows.append(f'<div class="flow-row">{"".join(boxes)}</div>')
        return '<div class="flow" role="figure" aria-label="flow diagram">' + \
            '<div class="arrow" aria-hidden="true">&#8595;</div>'.join(rows) + "</div>"
    raise TypeError(f"no HTML for {type(block).__name__}")


def render_html(title: str, subtitle: str, sections: list[Section], images: Path) -> str:
    nav = "".join(f'<a href="#{_e(s.anchor)}">{_e(s.title)}</a>' for s in sections)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{_e(title)}</h1><p>{_e(subtitle)}</p><nav>{nav}</nav>"]
    for section in sections:
        parts.append(f'<section id="{_e(section.anchor)}"><h2>{_e(section.title)}</h2>')
        parts += [_html_block(block, images) for block in section.blocks]
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md(text: str) -> str:
    """Text safe in a Markdown table cell or paragraph: no pipe, newline or markup character acts as syntax."""
    text = str(text).replace("\\", "\\\\").replace("\n", " ")
    for char in "|*_`[]<>#":
        text = text.replace(char, "\\" + char)
    return text


def _md_block(block, folder: str) -> str:
    if isinstance(block, Paragraph):
        return _md(block.text)
    if isinstance(block, Table):
        lines = ([f"*{_md(block.caption)}*", ""] if block.caption else []) + [
            "| " + " | ".join(_md(h) for h in block.header) + " |",
            "|" + "---|" * len(block.header)]
        lines += ["| " + " | ".join(_md(_cell(v).text) for v in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Image):
        return f"![{_md(block.caption)}]({quote(folder)}/{quote(block.file)})\n\n*{_md(block.caption)}*"
    if isinstance(block, Flow):  # main boxes as items, what leaves the flow and the splits under them
        lines = []
        for row in block.rows:
            for box in row:
                indent = "" if box.kind == "main" else "  "
                mark = "excluded: " if box.kind == "excluded" else ""
                text = "; ".join(_md(line.text) for line in box.lines)
                lines.append(f"{indent}- **{mark}{_md(box.title)}**: {text}")
        return "\n".join(lines)
    raise TypeError(f"no Markdown for {type(block).__name__}")


def render_markdown(title: str, subtitle: str, sections: list[Section], folder: str) -> str:
    parts = [f"# {_md(title)}", _md(subtitle)]
    for section in sections:
        parts.append(f"## {_md(section.title)}")
        parts += [_md_block(block, folder) for block in section.blocks]
    return "\n\n".join(parts) + "\n"
