"""The README and docs/ say only what the code does: every ``fedmrg`` command they show parses with the real
command-line parser, every ``--help`` they imply runs, and every relative link points at a file that exists.

Commands are taken from fenced ``bash``/``sh``/``console`` blocks and from indented blocks (four spaces), with
line continuations joined and ``# comments`` removed. Commands that need data or a trained model are checked for
their syntax only here; the cheap ones are run as written by the tests of their area (e.g. ``tests/deploy`` for
``poc/README.md``).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fedmrg.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"```(?:bash|sh|console|shell)\n(.*?)```", re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _blocks(text: str) -> list[str]:
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    indented: list[str] = []
    for line in text.splitlines():
        if line.startswith("    ") and not line.lstrip().startswith(("|", "-", "*")):
            indented.append(line[4:])
        elif indented:
            blocks.append("\n".join(indented))
            indented = []
    if indented:
        blocks.append("\n".join(indented))
    return blocks


def doc_commands(text: str) -> list[str]:
    """Every ``fedmrg ...`` command line in ``text`` (continuations joined, comments and prompts removed)."""
    out = []
    for block in _blocks(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            for part in re.split(r"\s(?:&&|;)\s", line):
                part = part.strip()
                m = re.match(r"(?:\S*/)?fedmrg\s+(.*)", part)
                if m and not part.startswith(("python", "pip")):
                    try:
                        words = shlex.split(m.group(1), comments=True)
                    except ValueError:
                        words = shlex.split(m.group(1).split(" #")[0])
                    out.append(" ".join(shlex.quote(w) for w in words))
    return out


COMMANDS = sorted({(f.relative_to(ROOT).as_posix(), c) for f in DOC_FILES for c in doc_commands(f.read_text())})


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10, COMMANDS
    assert any(c.startswith("generate") for _, c in COMMANDS)


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_parses(doc: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    try:
        parser.parse_args(shlex.split(command))
    except SystemExit as e:
        err = capsys.readouterr().err
        pytest.fail(f"{doc}: `fedmrg {command}` does not parse (exit {e.code}): {err.strip()}")


def test_every_subcommand_help_runs():
    """`fedmrg <command> --help` for every command the parser has: the help a user reads exits 0 and says something."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        proc = subprocess.run([sys.executable, "-m", "fedmrg.cli", name, "--help"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert len(proc.stdout.split()) > 10, (name, proc.stdout)


@pytest.mark.parametrize("doc", DOC_FILES, ids=[f.relative_to(ROOT).as_posix() for f in DOC_FILES])
def test_relative_links_resolve(doc: Path) -> None:
    missing = []
    for target in _LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        if not (doc.parent / target).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)}: links to missing files {missing}"


def test_doc_commands_extraction():
    text = "```bash\nfedmrg data prepare --source synthetic \\\n  --out D   # comment\n.venv/bin/fedmrg demo --out x && ls\n```\n"
    assert doc_commands(text) == ["data prepare --source synthetic --out D", "demo --out x"]
