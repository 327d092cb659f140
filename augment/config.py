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
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"{path}: cannot read config file ({e.strerror})") from e
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the config file as UTF-8") from e
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        if data is not None and not isinstance(data, dict):
            raise UserError(f"{path}: a config file must be a mapping of keys to values")
        cfg = _merge(cfg, data or {}, "")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-4")
        value = raw if _field_type(cfg, key) is str else yaml.safe_load(raw)  # text stays as typed
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = _merge(cfg, nested, "")
    check_config(cfg)
    where = None if path is None else str(path.resolve() if isinstance(path, Path) else path)
    setattr(cfg, _SOURCE, {"file": where, "overrides": overrides})
    return cfg


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


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


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
        raise UserError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, args))}")
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
            raise UserError(f"config key '{key}' must be a list, e.g. [{', '.join(['…'] * max(len(args), 1))}], got {value!r}")
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise UserError(f"config key '{key}' must be {tp.__name__}, got {value!r}")
