"""Where FedMRG finds shared data and keeps its caches (overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root when running from a source checkout (``app/custom/fedmrg`` -> root).
REPO_ROOT = Path(__file__).resolve().parents[3]


def shared_data_dir() -> Path:
    """Directory of the team's shared real data (``$FEDMRG_SHARED_DATA``, default ``<repo>/../shared/data``)."""
    env = os.environ.get("FEDMRG_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    """Cache for built-in models and generated demo data (``$FEDMRG_CACHE``, default ``~/.cache/fedmrg``)."""
    env = os.environ.get("FEDMRG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fedmrg"
