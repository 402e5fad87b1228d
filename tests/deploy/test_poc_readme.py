"""poc/README.md's commands run as written: bash itself expands every ``bash`` block of the page (variables, quotes,
line continuations) with ``python`` and ``nvflare`` replaced by recorders; every recorded ``poc/fedmrg_poc.py`` command
must parse, the cheap ones (``-h``, the job variant of a ``--set`` command) run for real, and the admin kits the page
opens must exist in the project. The POC itself runs in tests/deploy/test_poc_federation.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from fedmrg.paths import REPO_ROOT

from .conftest import PROJECT, load_poc

README = Path(REPO_ROOT) / "poc" / "README.md"
# each recorded command: its words separated by \x1f, ended by \x1e (a word may hold newlines: the page's JSON)
RECORDERS = 'python() { printf "python"; printf "\\037%s" "$@"; printf "\\036"; }\n'
RECORDERS += 'nvflare() { printf "nvflare"; printf "\\037%s" "$@"; printf "\\036"; }\n'
RECORDERS += "cd() { :; }\n"


def _commands() -> list[list[str]]:
    """Every python / nvflare command of the page's bash blocks, as bash splits it."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, f"{README} has no ```bash blocks"
    out = []
    for block in blocks:
        proc = subprocess.run(["bash", "-euc", RECORDERS + block], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"bash could not run this block of {README}:\n{block}\n{proc.stderr}"
        out += [record.split("\x1f") for record in proc.stdout.split("\x1e") if record]
    return out


@pytest.mark.slow
def test_every_poc_command_parses_and_the_cheap_ones_run(tmp_path, capsys):
    poc = load_poc()
    parser = poc.build_parser()
    commands = _commands()
    scripts = [c[1:] for c in commands if c[0] == "python" and c[1] == "poc/fedmrg_poc.py"]
    steps = {argv[1] for argv in scripts}
    assert {"prepare", "data", "start", "submit", "monitor", "download", "stop", "run"} <= steps, steps
    variants = 0
    for argv in scripts:
        args = parser.parse_args(argv[1:])  # exits (fails the test) on an unknown option or step
        assert args.workspace.is_absolute(), argv
        sets = getattr(args, "sets", None)
        if sets:  # build the job variant the command would submit: refused overrides fail here, not at run time
            job = poc.job_variant(tmp_path / f"ws{variants}", Path(REPO_ROOT) / "jobs" / "fedmrg", sets)
            variants += 1
            server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
            text = json.dumps(server)
            for item in sets:
                if item.startswith("rounds="):  # the rounds reach the workflow and the learner's schedule
                    rounds = int(item.split("=", 1)[1])
                    assert f'"num_rounds": {rounds}' in text and f'"rounds": {rounds}' in text, text[:2000]
    assert variants >= 1
    for step in sorted(steps):  # every step's help, as the page tells the reader to run
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([step, "-h"])
        assert exit_info.value.code == 0
    assert "prepare" in capsys.readouterr().out


def test_the_admin_consoles_the_page_opens_exist():
    admins = {p["name"] for p in yaml.safe_load(PROJECT.read_text())["participants"] if p["type"] == "admin"}
    opened = [c for c in _commands() if c[0] == "nvflare" and c[1:3] == ["poc", "start"] and "-p" in c]
    assert opened, "the admin-console section opens no console"
    for c in opened:
        assert c[c.index("-p") + 1] in admins, c


def test_the_page_names_the_transport_the_kits_use():
    """The kits' scheme is FLARE's HTTP driver over mutual TLS (tests/deploy/test_provisioning.py checks the kits);
    the page says so and never says gRPC."""
    for page in (README, Path(REPO_ROOT) / "docs" / "deployment.md"):
        text = " ".join(page.read_text(encoding="utf-8").replace("**", "").split())
        assert "HTTP driver" in text and "mutual TLS" in text and "grpc" not in text.lower(), page
