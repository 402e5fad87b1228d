"""The ``fedmrg`` command. Each area registers its own subcommands from ``<area>/cli.py``.

A ``<area>/cli.py`` module exposes ``register(subparsers)`` that adds its subcommands, each with
``set_defaults(func=...)`` where ``func(args) -> int`` is the exit code. Those modules import heavy
libraries (torch, transformers) inside ``func`` only, so ``fedmrg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fedmrg import __version__
from fedmrg.errors import FedMRGError

#: Modules that register subcommands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "fedmrg.data.cli",
    "fedmrg.labels.cli",
    "fedmrg.metrics.cli",
    "fedmrg.report.cli",
    "fedmrg.demo",
    "fedmrg.job",
    "fedmrg.vision.cli",
    "fedmrg.serve.cli",
    "fedmrg.bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmrg",
        description="FedMRG: federated radiology report generation on NVIDIA FLARE. "
        "Prepare federated datasets, label reports, score generated reports, train and evaluate models.",
    )
    parser.add_argument("--version", action="version", version=f"fedmrg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FedMRGError as e:
        print(f"fedmrg {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
