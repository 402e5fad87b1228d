"""Shared states on disk: safetensors files (no pickle), written atomically, with string metadata (e.g. the round).

Used by the server persistor (global and best model, resume point) and the site executor (last local model).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from fedmrg.errors import DataError


def save_state(path: str | Path, state: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` (name -> array) to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp), metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a file written by :func:`save_state`: ``(state, metadata)``. DataError naming the file when unreadable."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types; any of them means an unusable file
        raise DataError(f"{path}: not a readable safetensors state file: {e}") from e


def replace_dir(target: str | Path, write: Callable[[str], None]) -> None:
    """Let ``write(tmp_dir)`` fill a fresh temporary folder, then swap it in for ``target``.

    A crash while writing leaves the previous ``target`` intact (the swap is two renames; at worst a ``.old`` folder
    remains and is removed next time).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir()
    try:
        write(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
