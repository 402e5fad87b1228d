"""Helpers of the deployment tests: the POC script as a module, free ports, an isolated `nvflare` home."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

from fedmrg.paths import REPO_ROOT

POC_SCRIPT = Path(REPO_ROOT) / "poc" / "fedmrg_poc.py"
PROJECT = Path(REPO_ROOT) / "provisioning" / "project.yml"


def load_poc():
    """``poc/fedmrg_poc.py`` imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("fedmrg_poc", POC_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fedmrg_poc"] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def poc():
    return load_poc()
