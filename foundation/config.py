"""Typed configuration: dataclass defaults in code, YAML files that override them, and
``key=value`` overrides from the command line (``--set train.lr=1e-4``).

A config class is a (possibly nested) dataclass. Field types may be ``int``, ``float``,
``bool``, ``str``, ``Literal[...]``, ``Optional[...]``, ``tuple[T, ...]`` or another config
dataclass. A class may define ``check(self)`` raising ``ValueError`` for invalid values.
Every mistake becomes a one-line :class:`UserError` that lists the valid choices.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import UserError

if typing.TYPE_CHECKING:
    from importlib.resources.abc import Traversable

C = TypeVar("C")
SHIPPED_PACKAGE = "cxrgan_configs"  # the repository's configs/ folder, as installed (setup.cfg package_dir)
_SOURCE = "_config_source"  # attribute of a loaded config: the file and overrides it was resolved from


def shipped_config(name: str) -> Traversable:
    """The config file ``name`` (``classify-train.yaml``) shipped with the toolkit: the repository's
    ``configs/`` folder, installed as the package data of ``cxrgan_configs`` and read with
    :mod:`importlib.resources`, so an installed toolkit and a source checkout read the same file. A file
    that is not there is a :class:`UserError` (a broken installation), never a silent fall back to the
    defaults in code."""
    path = shipped_configs() / name
    if not path.is_file():
        raise UserError(f"{path}: the shipped config {name} is missing from this installation of cxrgan; "
                        "reinstall it (pip install --force-reinstall cxrgan) or give --config FILE")
    return path


def shipped_configs() -> Traversable:
    """The folder of the shipped configs: the package ``cxrgan_configs`` where the toolkit is installed
    (also editable), else, in a source checkout that was never installed, ``configs/`` beside this package."""
    try:
        return importlib.resources.files(SHIPPED_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def local_or_shipped(path: str | Path | None) -> Path | Traversable | None:
    """``path`` as given, except ``configs/<name>`` where there is no such file here: then the shipped config
    of that name, if the toolkit ships one, so commands written against the repository
    (``--config configs/gan-train-cpu.yaml``) work as installed, from any folder."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() or path.parent != Path("configs"):
        return path
    shipped = shipped_configs() / path.name
    return shipped if shipped.is_file() else path


def config_source(cfg: Any) -> dict:
    """``{"file": ..., "overrides": [...]}``: the YAML file (None: the defaults in code) and the
    ``key=value`` overrides :func:`load_config` resolved ``cfg`` from; both empty for a config built in code."""
    return dict(getattr(cfg, _SOURCE, None) or {"file": None, "overrides": []})


def load_config(cls: type[C], path: str | Path | Traversable | None = None, overrides: typing.Iterable[str] = ()) -> C:
    """Defaults of ``cls``, then the YAML file at ``path``, then each ``key=value`` override. The
    result remembers its file and overrides (:func:`config_source`) for the run's ``run.json``."""
    cfg = cls()
    overrides = list(overrides)
    if path is not None:
        path = Path(path) if isinstance(path, str) else path
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise UserError(f"{path}: {path.stat().st_size} bytes is too large for a config file (at most "
                                f"{MAX_CONFIG_BYTES}); a config overrides a few keys")
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"{path}: cannot read config file ({e.strerror})") from e
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the config file as UTF-8") from e
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        if data is not None and not isinstance(data, dict):
            raise UserError(f"{path}: a config file must be a mapping of keys to values")
        bounded(data, path)
        cfg = _merge(cfg, data or {}, "")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {short(item)}: expected key=value, e.g. --set train.lr=1e-4")
        try:
            value = raw if _field_type(cfg, key) is str else yaml.safe_load(raw)  # text stays as typed
        except yaml.YAMLError as e:
            reason = " ".join(str(e).split())[:120]
            raise UserError(f"--set {short(item)}: the value is not valid YAML ({reason}); quote text, "
                            "write lists as [a, b]") from e
        bounded(value, f"--set {short(item)}")
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = _merge(cfg, nested, "")
    check_config(cfg)
    where = None if path is None else str(path.resolve() if isinstance(path, Path) else path)
    setattr(cfg, _SOURCE, {"file": where, "overrides": overrides})
    return cfg


MAX_CONFIG_BYTES = 1 << 20  # a config file overrides a few dozen keys
MAX_CONFIG_VALUES = 10_000  # values in a config once YAML aliases are expanded


def bounded(data: Any, source: str | Path, limit: int = MAX_CONFIG_VALUES) -> None:
    """A one-line :class:`UserError` when ``data`` holds more than ``limit`` values once the aliases of its YAML
    (which share one object, ``&a [*b, *b, ...]``) are expanded: such a document (a "billion laughs") is tiny as
    text and endless as values. Counts at most ``limit + 1`` values, whatever the document."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            raise UserError(f"{source}: more than {limit} values once YAML aliases are expanded; a config is a small "
                            "mapping of keys to values, remove the anchors (&) and aliases (*)")
        if isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
        elif isinstance(item, (list, tuple)):
            stack += item


def config_from_dict(cls: type[C], values: dict, source: str | Path) -> C:
    """A config of ``cls`` from the plain dict a checkpoint stores (``source``, named in errors), checked as a
    YAML file is."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: holds no config of this toolkit")
    try:
        bounded(values, source)
        cfg = _merge(cls(), values, "")
        check_config(cfg)
    except UserError as e:
        raise UserError(f"{source}: {e}") from e
    return cfg


def edited_keys(cfg: Any, path: str | Path, show: int = 3) -> str:
    """What the YAML file ``path`` (a run's ``config.yaml``) says otherwise than ``cfg``, as
    ``key: file value, not stored value`` items ('' when they agree or there is no such file)."""
    path = Path(path)
    try:
        saved = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "it is no longer readable YAML"
    if not isinstance(saved, dict):
        return "it is no longer a mapping"
    stored, found = _flat(config_to_dict(cfg)), _flat(saved)
    missing = object()
    diffs = [f"{k}: {short(found.get(k, missing)) if k in found else 'absent'}, not {short(stored[k]) if k in stored else 'absent'}"
             for k in sorted(stored.keys() | found.keys()) if found.get(k, missing) != stored.get(k, missing)]
    return "; ".join(diffs[:show]) + (f"; and {len(diffs) - show} more" if len(diffs) > show else "")


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message echoes a value, never a whole document."""
    brief = reprlib.Repr()
    brief.maxlevel, brief.maxlist, brief.maxdict, brief.maxstring, brief.maxother = 3, 6, 6, limit, limit
    text = brief.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_config(cfg: Any, prefix: str = "") -> None:
    """Run every nested ``check()``; a ``ValueError`` becomes a one-line :class:`UserError`."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_config(value, f"{prefix}{f.name}.")
    if hasattr(cfg, "check"):
        try:
            cfg.check()
        except ValueError as e:
            raise UserError(f"invalid config{' in ' + prefix.rstrip('.') if prefix else ''}: {e}") from e


def config_to_dict(cfg: Any) -> dict:
    """Plain dict (tuples as lists) of a config dataclass, ready for YAML or JSON."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def config_text(cfg: Any) -> str:
    """The YAML text of a config, as ``config.yaml`` holds it."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(config_text(cfg))


def _merge(cfg: Any, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    changes = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise UserError(f"unknown config key '{full}'; valid keys here: {', '.join(names)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                sub = ", ".join(f.name for f in dataclasses.fields(current))
                raise UserError(f"config key '{full}' is a section; set one of its keys: {sub}")
            changes[key] = _merge(current, value, f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(cfg, **changes)


def _field_type(cfg: Any, key: str) -> Any:
    """The annotated type of dotted ``key`` in ``cfg``, or None when there is no such field."""
    *sections, name = key.split(".")
    for part in sections:
        cfg = getattr(cfg, part, None)
    if not dataclasses.is_dataclass(cfg):
        return None
    return typing.get_type_hints(type(cfg)).get(name)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise UserError(f"config key '{key}': {short(value)} is not one of {', '.join(map(str, args))}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, e.g. [{', '.join(['…'] * max(len(args), 1))}], "
                            f"got {short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise UserError(f"config key '{key}' must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # .inf and .nan pass every range check written as a comparison
                raise UserError(f"config key '{key}' must be a finite number, got {short(value)}")
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise UserError(f"config key '{key}' must be {getattr(tp, '__name__', tp)}, got {short(value)}")
