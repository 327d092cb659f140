"""One self-contained HTML page of a report: its markdown (tables included) and its figures embedded as data URIs,
so a reader opens it with a double-click, offline, and can mail it as one file. The markdown is converted by the
``markdown`` package (Python-Markdown, already installed with TensorBoard): a maintained CommonMark-style
converter with tables, rather than a hand-written one."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

import markdown

from .files import write_text_atomic

STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;line-height:1.45;color:#222}table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;
padding:.3rem .6rem;text-align:left}th{background:#f3f3f3}code{background:#f3f3f3;padding:0 .2rem}
figure{margin:1.5rem 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.9rem}"""


def html_report(text: str, figures: Sequence[Path], title: str) -> str:
    """The page of markdown ``text`` followed by each existing PNG of ``figures``, embedded, captioned with its
    file name."""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", markdown.markdown(text, extensions=["tables"])]
    shown = [f for f in figures if Path(f).suffix == ".png" and Path(f).is_file()]
    if shown:
        parts.append("<h2>Figures</h2>")
    for figure in shown:
        data = base64.b64encode(Path(figure).read_bytes()).decode("ascii")
        name = html.escape(Path(figure).name)
        parts.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption>'
                     "</figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html_report(dest: str | Path, text: str, figures: Sequence[Path], title: str) -> Path:
    """Write :func:`html_report` atomically to ``dest``; returns ``dest``."""
    write_text_atomic(dest, html_report(text, figures, title))
    return Path(dest)
