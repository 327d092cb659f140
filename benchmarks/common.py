"""What the benchmark scripts share: the CPU's name for the results table, and the baseline recipe
imported from its path (never copied)."""
from __future__ import annotations

import importlib.util
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_usual(path: str):
    """The module ``usual_recipe.py`` at ``path``."""
    spec = importlib.util.spec_from_file_location("usual_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
