from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("readme_command", ROOT / "scripts" / "readme_command.py")
readme_command = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_command)


def test_readme_has_exactly_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- command: ") == 2
    test_cmd = readme_command.readme_command("test", text)
    demo_cmd = readme_command.readme_command("demo", text)
    # each creates its own virtual environment and installs torch 2.13.0 before the rest
    for cmd in (test_cmd, demo_cmd):
        assert "-m venv" in cmd
        assert cmd.index("torch==2.13.0") < cmd.index("pip install -e")
    assert "pytest" in test_cmd


def test_missing_block_is_reported():
    with pytest.raises(SystemExit, match="no `<!-- command: nope -->`"):
        readme_command.readme_command("nope", "nothing here")
