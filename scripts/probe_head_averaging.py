"""Why a federated diagnosis head does not learn: FedAvg of the head alone, on frozen encoder features, in seconds.

The image features of every study are computed once with a frozen encoder (``--encoder``, default the built-in
self-supervised ResNet); then only the diagnosis head (:class:`fedmrg.report.diagnosis.DiagnosisHead`, its loss and
its finding-balanced sampling, as in training) is trained, centrally on the pooled sites or by FedAvg over the
partition's sites, for the benchmark's schedule (``--rounds`` x ``--local-steps`` per site, batch 8). Each variant
runs for ``--seeds`` seeds and prints the validation head F1 (``diag_f1`` of the benchmark: example-based F1 of the
positive states, on every site's ``val`` split) after each round, then a per-observation count of predicted and true
positives for the first seed of two variants.

    python scripts/probe_head_averaging.py --data DATA/cluster [--seeds 0,1,2]

Variants (all AdamW at ``--lr`` unless said):

- ``central``: the pooled sites, ``local_steps x sites`` steps per round (the federation's total);
- ``fedavg``: each site ``local_steps`` steps from the global head, sample-weighted average (the job's FedAvg);
- ``fedavg, logit-adjusted``: the same, each site's loss with PromptMRG's logit adjustment from its own positive
  rates (``losses.logit_adjustment: 1``; FedLC's remedy for label skew);
- ``fedavg, SGD``: plain SGD at ``--sgd-lr`` locally, so that the average of the site updates is the update of the
  pooled gradient to first order (AdamW's per-site normalisation is not).

Cost on the 2-core machine: features about 30 s (cached in ``--cache``), then a few seconds per variant and seed.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch


def site_features(data: Path, encoder: str, image_size: int, cache: Path | None) -> dict[tuple[str, str], tuple]:
    """{(site, split): (pooled features (N, C) float, states (N, 14) int64)} for the train and val splits."""
    if cache is not None and cache.is_file():
        return torch.load(cache)
    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.report.data_loading import open_split
    from fedmrg.report.encoder import VisualEncoder
    from fedmrg.report.fl_learner import FedMRGLearner

    cfg = FedMRGLearner(config="default.yaml", overrides={"encoder": {"path": encoder, "image_size": image_size}})
    enc = VisualEncoder(cfg._load_config().model.encoder).eval()
    fd = FederatedDataset.open(data)
    out = {}
    for site in fd.sites:
        for split in ("train", "val"):
            ds = open_split(fd, site=site, split=split, image_size=image_size)
            feats, states = [], []
            for i in range(0, len(ds), 32):
                items = [ds[j] for j in range(i, min(i + 32, len(ds)))]
                with torch.no_grad():
                    feats.append(enc(torch.stack([it["image"] for it in items])).pooled)
                states.append(torch.stack([torch.as_tensor(it["states"]) for it in items]))
            out[(site, split)] = (torch.cat(feats), torch.cat(states).long())
    if cache is not None:
        torch.save(out, cache)
    return out


class Probe:
    """The head's training and scoring on precomputed features."""

    def __init__(self, feats: dict, balance: float, batch: int = 8) -> None:
        from fedmrg.report.data_loading import finding_balance_weights

        self.sites = sorted({s for s, _ in feats})
        self.train = {s: feats[(s, "train")] for s in self.sites}
        self.val_x = torch.cat([feats[(s, "val")][0] for s in self.sites])
        self.val_y = torch.cat([feats[(s, "val")][1] for s in self.sites])
        self.batch = batch
        self.weights = {s: torch.as_tensor(finding_balance_weights(y.tolist(), balance), dtype=torch.float)
                        if balance else None for s, (_, y) in self.train.items()}  # fmt: skip

    def f1(self, head) -> float:
        from fedmrg.metrics.clinical import clinical_efficacy

        with torch.no_grad():
            pred = (head(self.val_x).argmax(-1) == 1).float().tolist()
        return float(clinical_efficacy(pred, (self.val_y == 1).float().tolist())["example_based"]["f1"])

    def _steps(self, head, x, y, weights, n, opt, gen, adjust: float) -> None:
        from fedmrg.report.diagnosis import diagnosis_loss

        if adjust:
            head.set_logit_adjustment(y, adjust)
        for _ in range(n):
            if weights is not None:
                idx = torch.multinomial(weights, self.batch, replacement=True, generator=gen)
            else:
                idx = torch.randint(len(y), (self.batch,), generator=gen)
            opt.zero_grad()
            diagnosis_loss(head(x[idx]), y[idx], head.loss_bias if adjust else None).backward()
            opt.step()

    def run(self, variant: str, *, rounds: int, local_steps: int, lr: float, sgd_lr: float, seed: int):
        """Head F1 after each round, and the final head."""
        from fedmrg.report.diagnosis import DiagnosisHead

        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        dim = self.val_x.shape[1]
        glob = DiagnosisHead(dim)
        curve = []

        def make_opt(params):
            if variant == "fedavg, SGD":
                return torch.optim.SGD(params, lr=sgd_lr)
            return torch.optim.AdamW(params, lr=lr, weight_decay=0.05)

        if variant == "central":
            x = torch.cat([self.train[s][0] for s in self.sites])
            y = torch.cat([self.train[s][1] for s in self.sites])
            w = None if self.weights[self.sites[0]] is None else torch.cat([self.weights[s] for s in self.sites])
            for _ in range(rounds):  # AdamW restarts each round, as in a centralized run's rounds
                self._steps(glob, x, y, w, local_steps * len(self.sites), make_opt(glob.parameters()), gen, 0.0)
                curve.append(self.f1(glob))
            return curve, glob
        adjust = 1.0 if variant == "fedavg, logit-adjusted" else 0.0
        for _ in range(rounds):
            states, counts = [], []
            for s in self.sites:
                head = DiagnosisHead(dim)
                head.load_state_dict(glob.state_dict())
                x, y = self.train[s]
                self._steps(head, x, y, self.weights[s], local_steps, make_opt(head.parameters()), gen, adjust)
                states.append(head.state_dict())
                counts.append(len(y))
            total = sum(counts)
            glob.load_state_dict({k: sum(st[k] * n for st, n in zip(states, counts, strict=True)) / total for k in states[0]})
            curve.append(self.f1(glob))
        return curve, glob


VARIANTS = ("central", "fedavg", "fedavg, logit-adjusted", "fedavg, SGD")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="one partition of `fedmrg bench prepare` (DATA/cluster)")
    ap.add_argument("--encoder", default="builtin-ssl", help="frozen encoder (default builtin-ssl)")
    ap.add_argument("--image-size", type=int, default=96, help="pixels (default 96, the benchmark's)")
    ap.add_argument("--rounds", type=int, default=10, help="FL rounds (default 10)")
    ap.add_argument("--local-steps", type=int, default=20, help="head steps per site and round (default 20)")
    ap.add_argument("--lr", type=float, default=2e-2, help="AdamW learning rate (default 2e-2: head_lr_scale 10)")
    ap.add_argument("--sgd-lr", type=float, default=1.0, help="SGD learning rate of 'fedavg, SGD' (default 1.0)")
    ap.add_argument("--balance", type=float, default=0.5, help="training.balance_findings (default 0.5)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    ap.add_argument("--cache", type=Path, help="feature cache file (default: none)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from fedmrg.observations import OBSERVATIONS

    probe = Probe(site_features(args.data, args.encoder, args.image_size, args.cache), args.balance)
    print("positive rate per observation and site (train):")
    print(f"  {'':20s}" + "".join(f"{s:>9s}" for s in probe.sites))
    for o, name in enumerate(OBSERVATIONS):
        rates = [float((probe.train[s][1][:, o] == 1).float().mean()) for s in probe.sites]
        print(f"  {name[:20]:20s}" + "".join(f"{r:9.2f}" for r in rates))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    heads = {}
    print(f"\nvalidation head F1 after each round ({args.rounds} x {args.local_steps} steps per site), "
          "then the mean of the last three rounds:")  # fmt: skip
    for variant in VARIANTS:
        tails = []
        for seed in seeds:
            curve, head = probe.run(variant, rounds=args.rounds, local_steps=args.local_steps, lr=args.lr,
                                    sgd_lr=args.sgd_lr, seed=seed)  # fmt: skip
            heads.setdefault(variant, head)
            tails.append(statistics.mean(curve[-3:]))
            print(f"  {variant:24s} seed {seed}: " + " ".join(f"{v:.2f}" for v in curve) + f" | {tails[-1]:.3f}",
                  flush=True)  # fmt: skip
        spread = statistics.stdev(tails) if len(tails) > 1 else 0.0
        print(f"  {variant:24s} mean of the last three rounds over seeds: {statistics.mean(tails):.3f} +- {spread:.3f}")
    print("\npredicted / true positives on the validation studies (first seed):")
    print(f"  {'':20s}{'true':>6s}" + "".join(f"{v[:14]:>16s}" for v in heads))
    with torch.no_grad():
        preds = {v: (h(probe.val_x).argmax(-1) == 1) for v, h in heads.items()}
    for o, name in enumerate(OBSERVATIONS):
        true = probe.val_y[:, o] == 1
        cells = [f"{int(p[:, o].sum()):>8d} ({int((p[:, o] & true).sum()):>3d} ok)" for p in preds.values()]
        print(f"  {name[:20]:20s}{int(true.sum()):>6d}" + "".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    main()
