"""``fedmrg bench``: the paper's comparison. ``prepare`` writes the benchmark federation
(:mod:`fedmrg.bench.federation`), ``run`` trains and scores every method (:mod:`fedmrg.bench.runner`), ``report``
writes the table and plots (:mod:`fedmrg.bench.report`); see docs/benchmark.md."""

from __future__ import annotations

import argparse
from pathlib import Path

RUN_DESCRIPTION = """\
Train and score every method of the paper's comparison with the same seeds, rounds and local step budget, on both
partitions written by `fedmrg bench prepare` (DATA/cluster, DATA/stratified).

Rows: centralized, local-only, fedlora, fedvera, fedprompt, fedprefix, fedadalora, fedpara, promptmrg, fedmrg and
FedMRG's five ablations (fedmrg-no-contrastive, -no-specialized, -no-prompts, -no-kd-s2g, -no-kd-g2s).

Each run writes OUT/runs/<partition>/<method>/seed<k>/ (metrics.json: in-domain test and unseen-site BLEU-1..4,
ROUGE-L, CIDEr, CE P/R/F1, the most-frequent-report baseline, per-round validation and measured bytes per round;
model/: the final model for `fedmrg evaluate --model` / `fedmrg generate --model`). A run with a metrics.json is
skipped; an interrupted run resumes at its next round (in-process). At the end the report is written (as
`fedmrg bench report OUT`).

Profiles (the same budget for every method): --profile quick (a smoke run of every row: 1 seed, 2 rounds x 1 step,
64 px, 16 + 16 studies scored; sized for <= 20 min on 2 CPU cores), full (3 seeds, 6 rounds x 8 steps, 96 px,
120 + 120 studies, the diagnosis head calibrated after the last round; 1-11 min per run on 2 CPU cores: one
partition's 45 runs take about 2 h, both about 4 h; pick rows with --methods and --partitions, see docs/benchmark.md), tiny (tiny built-in models; tests). --rounds, --local-steps, --seeds,
--eval-studies override the profile; --set KEY=VALUE changes the run configuration of every row (e.g.
--set training.learning_rate=5e-4; the report refuses a folder whose runs differ in it).

Orchestrators: inprocess (default) runs the FLARE job's learner class and aggregator in this process;
simulator runs `nvflare simulator` on a variant of jobs/fedmrg (federated rows only)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="the paper's benchmark: prepare its federation, run it, report it",
                                  description=__doc__)  # fmt: skip
    sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    from fedmrg.bench import federation

    federation.register(sub)

    p = sub.add_parser("run", help="train and score every method on both partitions (resumable)",
                       description=RUN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", type=Path, required=True, help="output folder of `fedmrg bench prepare`")
    p.add_argument("--out", type=Path, required=True, help="benchmark folder (runs/, report)")
    p.add_argument("--profile", default="full", choices=("quick", "full", "tiny"), help="budget (default full)")
    p.add_argument("--quick", dest="profile", action="store_const", const="quick", help="the same as --profile quick")
    p.add_argument("--partitions", default="cluster,stratified", help="comma-separated (default cluster,stratified)")
    p.add_argument("--methods", default="all", help="comma-separated rows (default all)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the profile's 0,1,2)")
    p.add_argument("--rounds", type=int, help="FL rounds (default: the profile's)")
    p.add_argument("--local-steps", type=int, help="optimizer steps per site and round (default: the profile's)")
    p.add_argument("--eval-studies", type=int, help="studies scored per evaluation set, 0 = all (default: profile)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a run-configuration override for every row, dotted key, JSON value (repeatable), e.g. "
                        "training.learning_rate=5e-4")  # fmt: skip
    p.add_argument("--orchestrator", default="inprocess", choices=("inprocess", "simulator"),
                   help="inprocess (default) or the FLARE simulator")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-comm", action="store_true", help="report without the Comm. column at 7B (see `report`)")
    p.add_argument("--rescore", action="store_true",
                   help="score finished runs' saved models again (after a change to the evaluation) instead of "
                        "skipping them; --eval-studies changes how many studies (default: each run's own)")  # fmt: skip
    p.set_defaults(func=run_bench)

    p = sub.add_parser("report", help="the Markdown table and PNG plots of a benchmark folder",
                       description="Read OUT/runs/*/*/seed*/metrics.json and write OUT/benchmark.md (one table in "
                       "the paper's layout per partition: mean +- std over seeds, in-domain and unseen-site, Comm. "
                       "at Llama-2-7B scale from `fedmrg inspect-model --method all` beside the measured bytes per "
                       "round, and the most-frequent-report baseline) and PNG plots: validation metric vs round per "
                       "method, CE-F1 vs bytes per round.")  # fmt: skip
    p.add_argument("out", type=Path, help="the benchmark folder of `fedmrg bench run --out`")
    p.add_argument("--no-comm", action="store_true", help="leave out the Comm. column at 7B (no meta-device count)")
    p.set_defaults(func=report_bench)


def _ints(text: str) -> tuple[int, ...]:
    from fedmrg.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from e


def run_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from fedmrg.bench import runner
    from fedmrg.errors import ConfigError

    profile = runner.PROFILES[args.profile]
    changes = {k: v for k, v in (("rounds", args.rounds), ("local_steps", args.local_steps),
                                 ("eval_studies", args.eval_studies)) if v is not None}  # fmt: skip
    if args.seeds:
        changes["seeds"] = _ints(args.seeds)
    for key, value in changes.items():
        if key != "seeds" and (value < (0 if key == "eval_studies" else 1)):
            raise ConfigError(f"--{key.replace('_', '-')} must be >= {0 if key == 'eval_studies' else 1}, got {value}")
    if args.sets:
        changes["overrides"] = runner.with_sets(profile.overrides, args.sets, config=profile.config)
    profile = dataclasses.replace(profile, **changes)
    if not profile.seeds:
        raise ConfigError("--seeds: give at least one seed")
    partitions = [p for p in args.partitions.split(",") if p]
    bad = [p for p in partitions if p not in runner.PARTITIONS]
    if bad or not partitions:
        raise ConfigError(f"--partitions: unknown {bad}; choose from {', '.join(runner.PARTITIONS)}")
    methods = list(runner.BENCH_METHODS) if args.methods == "all" else [m for m in args.methods.split(",") if m]
    for m in methods:
        runner.method_overrides(m)  # ConfigError naming an unknown row
    if args.orchestrator == "simulator":
        wrong = [m for m in methods if m in ("centralized", "local-only")]
        if wrong:
            raise ConfigError(f"--orchestrator simulator runs federated rows only; remove {wrong} from --methods")
    out = args.out.resolve()
    specs = runner.plan(args.data.resolve(), out, partitions, methods, profile.seeds)
    runner.run_all(specs, profile, orchestrator=args.orchestrator, threads=args.threads,
                   rescore_finished=args.rescore, eval_studies=args.eval_studies)  # fmt: skip
    if not args.no_report:
        from fedmrg.bench import report

        path = report.write_report(out, comm=not args.no_comm)
        print(f"report: {path}")
    return 0


def report_bench(args: argparse.Namespace) -> int:
    from fedmrg.bench import report

    path = report.write_report(args.out.resolve(), comm=not args.no_comm)
    print(f"report: {path}")
    return 0
