"""Print one of the README's two set-up commands, so CI runs exactly what the README says.

The README marks each command with an HTML comment ``<!-- command: NAME -->`` on the line before a fenced
``bash`` block holding exactly one line. Usage: ``python3 scripts/readme_command.py test``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(name: str, text: str | None = None) -> str:
    text = README.read_text(encoding="utf-8") if text is None else text
    m = re.search(rf"<!-- command: {re.escape(name)} -->\s*```bash\n(.+?)\n```", text, re.S)
    if not m:
        raise SystemExit(f"{README}: no `<!-- command: {name} -->` block followed by a ```bash fence")
    lines = [ln for ln in m.group(1).splitlines() if ln.strip()]
    if len(lines) != 1:
        raise SystemExit(f"{README}: the `{name}` command must be exactly one line, found {len(lines)}")
    return lines[0]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: readme_command.py NAME")
    print(readme_command(sys.argv[1]))
