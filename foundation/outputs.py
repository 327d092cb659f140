"""Output files named after input files, confined to their destination folder.

Every command that writes one file per input (``lungseg``, ``cam``, ``predict --cam``, ``evaluate --cam``,
``synthesize``) maps the input's name to an output path with :func:`output_path`: a name taken from a
manifest (``../x.png``, ``/etc/x.png``, ``a/../../b.png``) or from a checkpoint can never place a file outside
the destination, nor onto the input it was made from.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Iterable

from .errors import UserError


def safe_name(text: str) -> str:
    """``text`` as one plain file-name part: letters, digits, ``.+-_``; no separators, no leading dot
    (``..`` becomes ``_``); bytes of a name that is not valid UTF-8 become ``_`` too."""
    return re.sub(r"[^\w.+-]", "_", text).lstrip(".") or "_"


def output_path(dest: str | Path, name: str, suffix: str = "", flat: bool = False) -> Path:
    """The path inside ``dest`` for an output named ``name`` (a relative path such as ``covid/x``; ``/`` and
    ``\\`` separate folders) plus ``suffix``.

    Each part of ``name`` is made a plain file name (:func:`safe_name`; empty and ``.`` parts dropped, so an
    absolute name becomes relative and ``..`` becomes ``_``); with ``flat`` the parts are joined by ``_`` into one
    file name. The result is resolved (symbolic links followed) and must lie inside the resolved ``dest``,
    else a one-line :class:`UserError`.
    """
    parts = [safe_name(p) for p in re.split(r"[/\\]", name) if p not in ("", ".")] or ["_"]
    if flat:
        parts = ["_".join(parts)]
    parts[-1] += suffix
    root = Path(dest).resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root) or path == root:
        raise UserError(f"{Path(dest) / PurePosixPath(*parts)}: would be written outside {dest} (a symbolic link "
                        "points away); remove the link or choose another --dest")
    return path


def confined_outputs(inputs: Iterable[str | Path], outputs: Iterable[Path]) -> None:
    """A one-line :class:`UserError` when two inputs would write one output, or an output is an input."""
    inputs, outputs = list(inputs), list(outputs)
    sources = {os.path.realpath(p) for p in inputs}
    seen: dict[Path, str | Path] = {}
    for src, out in zip(inputs, outputs):
        if os.path.realpath(out) in sources:
            raise UserError(f"{out}: is an input image and would be overwritten by an output; choose a --dest "
                            "outside the input folders")
        if out in seen:
            raise UserError(f"{src} and {seen[out]} would both write {out}; rename one or run them with "
                            "different --dest")
        seen[out] = src


def display_name(text: str | Path) -> str:
    """``text`` printable in any figure, log or message: bytes of a file name that is not valid UTF-8 (held
    as surrogate escapes) shown as U+FFFD."""
    return os.fsencode(str(text)).decode("utf-8", "replace")
