"""Files written whole or not at all (a temporary file and a rename), strict JSON, and the clean-up of
temporaries that killed processes left."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .errors import UserError


def json_safe(value):
    """``value`` with NaN (a rate with no cases, e.g. the sensitivity of an absent class) and infinities
    (thresholds) as null, so the JSON written of it is strict."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old file or
    the new one, never half of one. A failure is a one-line :class:`UserError` naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: could not write ({e.strerror or e}); free disk space or choose another "
                        "output folder") from e
    finally:
        tmp.unlink(missing_ok=True)


TEMPORARY = re.compile(r"\.(?:tmp|part)(\d+)(?:\.\w+)?$")  # how writes here name their temporary files


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files (``*.tmp<pid>``, ``*.tmp<pid>.npy``, ``*.part<pid>.npy``, ...) that processes
    no longer running left in ``folder`` (killed while writing); those of running processes stay. Returns the
    files removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        found = TEMPORARY.search(path.name)
        if found and not process_alive(int(found.group(1))) and path.is_file():
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass  # another process removed it, or it is not ours to remove
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OverflowError, ValueError):
        return False  # no such pid can exist
    return True
