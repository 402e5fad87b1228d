"""``fedmrg bench``: the paper's comparison. ``prepare`` writes the benchmark federation
(:mod:`fedmrg.bench.federation`); see docs/benchmark.md."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="the paper's benchmark: prepare its federation",
                                  description=__doc__)  # fmt: skip
    sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    from fedmrg.bench import federation

    federation.register(sub)
