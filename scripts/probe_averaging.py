"""Which averaged part undoes the diagnosis head? One FedAvg round by hand, then each site's head scored with mixes of
its own and the averaged state.

Every site of a benchmark partition trains FedMRG for ``--local-steps`` from the same model (the benchmark's
learners, profile ``full`` at ``--rounds`` rounds for the schedule); the updates are averaged (weighted by samples,
as the job's aggregator does); then each site's validation head F1 (example-based F1 of the head's positive states,
``diag_f1`` of the benchmark's round table, ``--val-studies`` studies per site) is measured for the model made of

- ``local``: the site's own trained state (no averaging),
- ``averaged``: the FedAvg state,
- ``own X``: the FedAvg state with the site's own X (BatchNorm running statistics, encoder, diagnosis head, ...).

    python scripts/probe_averaging.py --data DATA/cluster [--overrides '{"encoder": {"path": "builtin-ssl"}}']
        [--averagings 3]   # the next round starts from the average, as in FedAvg

Cost on the 2-core machine: one round of every site (about 2 min at 20 steps, one thread), then sites x mixes
validations (about 15 s each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _is_bn_stat(key: str) -> bool:
    return key.startswith("encoder.") and ("running_mean" in key or "running_var" in key)


#: mix name -> which keys a site keeps from its own trained state
MIXES: dict[str, Callable[[str], bool]] = {
    "local (no averaging)": lambda k: True,
    "averaged": lambda k: False,
    "own BatchNorm statistics": _is_bn_stat,
    "own encoder": lambda k: k.startswith("encoder."),
    "own diagnosis head": lambda k: k.startswith("diagnosis_head."),
    "own encoder + head": lambda k: k.startswith(("encoder.", "diagnosis_head.")),
    "own projector + adapter + state tokens": lambda k: k.startswith(("projector.", "adapter.", "state_tokens.")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="one partition of `fedmrg bench prepare` (DATA/cluster)")
    ap.add_argument("--overrides", default="{}", help="run-configuration overrides, JSON (default none)")
    ap.add_argument("--local-steps", type=int, default=20, help="steps per site (default 20)")
    ap.add_argument("--rounds", type=int, default=10, help="the schedule's rounds (default 10; one is run)")
    ap.add_argument("--val-studies", type=int, default=16, help="validation studies per site (default 16)")
    ap.add_argument("--averagings", type=int, default=1,
                    help="FedAvg rounds; the table is printed after each, the next starts from the average (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()

    import fedmrg.bench.runner as runner
    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.report.fl_learner import merge_overrides

    base = runner.PROFILES["full"]
    profile = dataclasses.replace(base, rounds=args.rounds, local_steps=args.local_steps, val_studies=args.val_studies,
                                  overrides=merge_overrides(base.overrides, json.loads(args.overrides)))  # fmt: skip
    sites = list(FederatedDataset.open(args.data).sites)
    with tempfile.TemporaryDirectory() as work:
        spec = runner.RunSpec(partition=args.data.name, method="fedmrg", seed=args.seed, data=args.data, out=Path(work))
        learners = runner._setup_sites(spec, profile, sites, Path(work), args.threads)
        state = learners[sites[0]].initial_shared_state()
        for r in range(args.averagings):
            t0 = time.monotonic()
            outs = {s: learners[s].train(state, round_num=r, extra={}) for s in sites}
            print(f"\nround {r}: {len(sites)} sites x {args.local_steps} steps in {time.monotonic() - t0:.0f} s",
                  flush=True)  # fmt: skip
            n = sum(o.num_samples for o in outs.values())
            avg = {k: np.asarray(sum(o.shared_state[k] * o.num_samples for o in outs.values()) / n, dtype=np.float32)
                   for k in state}  # fmt: skip
            parts = {  # how far sites move, and how far their mean
                "encoder weights": lambda k: k.startswith("encoder.") and not _is_bn_stat(k),
                "encoder BatchNorm statistics": _is_bn_stat,
                "diagnosis head": lambda k: k.startswith("diagnosis_head."),
                "projector": lambda k: k.startswith("projector."),
            }
            for part, member in parts.items():
                keys = [k for k in state if member(k)]
                site = np.mean([np.sqrt(sum(float(((outs[s].shared_state[k] - state[k]) ** 2).sum()) for k in keys))
                                for s in sites])  # fmt: skip
                mean = np.sqrt(sum(float(((avg[k] - state[k]) ** 2).sum()) for k in keys))
                if site > 0:
                    print(f"{part}: update L2 {site:.3g} per site, {mean:.3g} averaged "
                          f"(ratio {mean / site:.2f}; 1 = all sites agree, {1 / np.sqrt(len(sites)):.2f} = unrelated)")
            print("| model | " + " | ".join(sites) + " | mean |")
            print("|---|" + "---:|" * (len(sites) + 1))
            for name, own in MIXES.items():
                f1 = []
                for s in sites:
                    mixed = {k: np.asarray(outs[s].shared_state[k] if own(k) else avg[k], dtype=np.float32)
                             for k in state}  # fmt: skip
                    f1.append(learners[s].validate(mixed, personalized=True, split="val").get("diag_f1", 0.0))
                print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in f1) + f" | {np.mean(f1):.2f} |", flush=True)
            state = avg


if __name__ == "__main__":
    main()
