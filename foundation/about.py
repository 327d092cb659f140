"""What this installation of the toolkit is: its version and whether it runs from a source checkout or as
installed from a wheel. Imports nothing heavy, so ``cxrgan --version`` answers at once."""
from __future__ import annotations

from pathlib import Path


def source_checkout() -> Path | None:
    """The repository root when the toolkit runs from a source checkout (editable install or ``python
    cli.py``), None when it runs as installed from a wheel."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "setup.cfg").is_file() else None


def toolkit_version() -> str:
    """The toolkit's version: ``setup.cfg``'s in a source checkout, else the installed distribution's
    (the same number, read from the wheel's metadata)."""
    root = source_checkout()
    if root is not None:
        import configparser
        parser = configparser.ConfigParser()
        parser.read(root / "setup.cfg", encoding="utf-8")
        return parser.get("metadata", "version", fallback="unknown")
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("cxrgan")
    except PackageNotFoundError:
        return "unknown"
