"""Argument checks shared by the FLARE components: each message names the argument, the expectation and the value.

Components call these in ``__init__`` so that a bad job config fails when the job is loaded, with a message like
"`max_items_per_site` must be an int >= 1, got 0".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_str(name: str, value: Any, *, allow_empty: bool = True) -> None:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str, got {type(value).__name__} {value!r}")
    if not allow_empty and not value:
        raise ValueError(f"`{name}` must be a non-empty str")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}")


def check_int(name: str, value: Any, *, minimum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}")


def check_dict(name: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"`{name}` must be a dict (JSON object), got {type(value).__name__} {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise TypeError(f"`{name}` must have str keys, got {bad[:3]}")


def check_str_list(name: str, value: Any, *, allow_empty: bool = True) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"`{name}` must be a list of non-empty str, got {value!r}")
    if not allow_empty and not value:
        raise ValueError(f"`{name}` must not be empty")
    if len(set(value)) != len(value):
        raise ValueError(f"`{name}` has duplicates: {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def check_dotted_path(name: str, value: Any) -> None:
    """A ``package.module.Class`` path as used by FLARE job configs."""
    check_str(name, value, allow_empty=False)
    parts = value.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise ValueError(f"`{name}` must be a dotted class path like 'package.module.Class', got {value!r}")
