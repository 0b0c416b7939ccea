"""The report's HTML and Markdown, written side by side from the templates in ``templates/``.

The HTML markup lives in template files shipped with the package (:func:`render` fills
them with :class:`string.Template`); the Markdown beside it is plain text. HTML
templates are laid out on several lines for reading: a line break and the indentation
after it are not part of the page. Other templates lose their final newline only.
"""

from __future__ import annotations

import base64
import functools
import html
import re
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from bsym.io import disk_error
from bsym.outputs import GENERATOR, atomic_output, write_csv


@functools.cache
def template_text(name: str) -> str:
    """The text of ``templates/<name>`` of this package, without its layout."""
    text = resources.files("bsym.report").joinpath("templates").joinpath(name).read_text(
        encoding="utf-8")
    return re.sub(r"\n[ \t]*", "", text) if name.endswith(".html") else text.removesuffix("\n")


def render(name: str, /, **values) -> str:
    """``templates/<name>`` with ``values`` substituted (escape them first where needed)."""
    return Template(template_text(name)).substitute(values)


def esc(value) -> str:
    """``value`` as HTML text."""
    return html.escape(str(value))


def figure_html(path) -> str:
    """A figure inlined as base64 data, captioned with its file name."""
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode()
    suffix = path.suffix.lower().lstrip(".")
    kind = {"svg": "svg+xml", "jpg": "jpeg"}.get(suffix, suffix)
    return render("figure.html", name=esc(path.name), kind=kind, data=data)


def _is_float(value) -> bool:
    return isinstance(value, float | np.floating)


def html_table(frame: pd.DataFrame, floats: str = "{:.4g}") -> str:
    """``frame`` as an HTML table: numbers right-aligned with ``floats``, text left-aligned."""
    def cell(value):
        if _is_float(value):
            return render("cell_number.html", value="" if np.isnan(value) else floats.format(value))
        return render("cell_text.html", value=esc(value))

    head = "".join(render("table_head.html", name=esc(c)) for c in frame.columns)
    rows = "".join(render("table_row.html", cells="".join(map(cell, row)))
                   for row in frame.itertuples(index=False))
    return render("table.html", head=head, rows=rows)


def md_table(frame: pd.DataFrame, floats: str = "{:.4g}") -> str:
    """``frame`` as a Markdown table (numbers with ``floats``)."""
    def cell(value):
        if _is_float(value):
            return "" if np.isnan(value) else floats.format(value)
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


class Document:
    """The report being written: its HTML and Markdown side by side, and the figures,
    tables and notes it holds.

    Parameters
    ----------
    out : Path
        The report folder; figures go to ``figures/``, tables to ``tables/``.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.figdir, self.tabdir = self.out / "figures", self.out / "tables"
        self.html: list[str] = []
        self.md: list[str] = []
        self.figures: list[Path] = []
        self.tables: list[Path] = []
        self.notes: list[str] = []

    def make_folders(self):
        """Create ``figures/`` and ``tables/``."""
        for folder in (self.figdir, self.tabdir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise disk_error(err, folder, what="the report folder") from err

    def section(self, title, *, heading=True):
        """Open a section (``heading=False``: a Markdown heading only)."""
        if heading:
            self.html.append(render("section.html", title=esc(title)))
        self.md.append(f"\n## {title}\n")

    def add(self, html_text, md_text):
        """Markup of its own: HTML, and the Markdown beside it."""
        self.html.append(html_text)
        self.md.append(md_text)

    def note(self, text):
        """A note: what is missing and why (also returned by the report's builder)."""
        self.notes.append(text)
        self.html.append(render("note.html", text=esc(text)))
        self.md.append(f"_{text}_\n")

    def text(self, text):
        self.html.append(render("text.html", text=esc(text)))
        self.md.append(f"{text}\n")

    def table(self, frame, floats="{:.4g}"):
        self.html.append(html_table(frame, floats))
        self.md.append(md_table(frame, floats) + "\n")

    def figure(self, path):
        path = Path(path)
        self.figures.append(path)
        self.html.append(figure_html(path))
        self.md.append(f"![{path.stem}]({path.relative_to(self.out).as_posix()})\n"
                       if path.is_relative_to(self.out) else f"![{path.stem}]({path})\n")

    def save_table(self, frame, name) -> Path:
        """Write ``frame`` as ``tables/<name>`` (listed among the report's tables)."""
        path = self.tabdir / name
        self.tables.append(path)
        write_csv(frame, path)
        return path

    def write(self, title) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.html``; return their paths (HTML first)."""
        html_path, md_path = self.out / "report.html", self.out / "report.md"
        with atomic_output(md_path, what="the Markdown report") as tmp:
            tmp.write_text(render("report.md", title=title, body="\n".join(self.md)) + "\n",
                           encoding="utf-8")
        page = render("report.html", generator=esc(GENERATOR), title=esc(title),
                      style=template_text("report.css"), body="\n".join(self.html))
        with atomic_output(html_path, what="the HTML report") as tmp:
            tmp.write_text(page + "\n", encoding="utf-8")
        return html_path, md_path
