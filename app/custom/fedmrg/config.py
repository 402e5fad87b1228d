"""YAML configuration: load a file into a dataclass, with clear errors.

Every config in FedMRG is a (possibly nested) dataclass. :func:`from_dict` checks unknown keys, types
(``int``, ``float``, ``str``, ``bool``, ``list[...]``, ``dict[...]``, ``Literal[...]``, ``X | None``,
nested dataclasses) and, for fields declared with ``metadata={"path": "file"}`` or ``{"path": "dir"}``,
that the path exists. Each message names the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml

from fedmrg.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raises ConfigError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path, cls: type[T]) -> T:
    """Load ``path`` (YAML) into dataclass ``cls``; relative paths in path fields resolve against the file."""
    path = Path(path)
    return from_dict(cls, load_yaml(path), source=str(path), base_dir=path.parent)


def from_dict(
    cls: type[T], data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None, _prefix: str = ""
) -> T:
    """Build dataclass ``cls`` from a mapping, validating keys, types and paths (see module docstring)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: `{_prefix.rstrip('.') or 'config'}` must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(f'`{_prefix}{k}`' for k in unknown)}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{_prefix}{name}"
        kwargs[name] = _coerce(hints[name], value, key, source, base_dir)
        kind = fields[name].metadata.get("path")
        if kind and kwargs[name] is not None:
            p = Path(kwargs[name])
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            ok = p.is_file() if kind == "file" else p.is_dir()
            if not ok:
                raise ConfigError(f"{source}: `{key}`: {kind} not found: {p}")
            kwargs[name] = str(p)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from e


def _coerce(tp: Any, value: Any, key: str, source: str, base_dir: Path | None) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key, source, base_dir)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: `{key}` has the wrong type: got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: `{key}` must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source=source, base_dir=base_dir, _prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: `{key}` must be a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]", source, base_dir) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: `{key}` must be a mapping, got {type(value).__name__}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{key}.{k}", source, base_dir) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: `{key}` must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: `{key}` must be an int, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{source}: `{key}` must be a {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value
