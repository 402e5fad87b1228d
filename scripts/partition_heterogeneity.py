"""Heterogeneity of the FL-MRG partitions on the IU X-ray reports, measured in one run.

Reads the reports (``iu-kaggle`` reader, studies without image files kept), labels them with the rule-based labeler,
then partitions them with every method and prints the mean pairwise Jensen–Shannon divergence between the training
sites' label and word distributions (train + val pooled per site), the site sizes and the time each step took.

    .venv/bin/python scripts/partition_heterogeneity.py [--input ../shared/data/iu_xray] [--sites 5] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedmrg.data.heterogeneity import heterogeneity
from fedmrg.data.partition import PartitionConfig, partition_records
from fedmrg.data.readers import read_source
from fedmrg.labels import label_reports
from fedmrg.paths import shared_data_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(shared_data_dir() / "iu_xray"))
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="seeds averaged per method")
    args = ap.parse_args()

    t = time.perf_counter()
    records = read_source("iu-kaggle", args.input, missing_images="keep").records
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    for r, labels in zip(records, label_reports([r.report for r in records]), strict=True):
        r.labels = labels
    t_label = time.perf_counter() - t
    print(f"{len(records)} IU studies: read {t_read:.1f} s, labelled {t_label:.1f} s; {args.sites} sites, "
          f"seeds 0..{args.seeds - 1}")  # fmt: skip

    settings = [("random", {}), ("cluster", {}), ("dirichlet", {"alpha": 0.1}), ("dirichlet", {"alpha": 0.5}),
                ("dirichlet", {"alpha": 0.9})]  # fmt: skip
    print(f"{'partition':<18} {'label JSD':>10} {'text JSD':>9} {'seconds':>8}  site sizes (seed 0)")
    rows = {}
    for method, kw in settings:
        lab, txt, secs, sizes = [], [], [], None
        for seed in range(args.seeds):
            t = time.perf_counter()
            part = partition_records(records, PartitionConfig(method=method, num_sites=args.sites, seed=seed, **kw))
            secs.append(time.perf_counter() - t)
            h = heterogeneity({n: s.train + s.val for n, s in part.sites.items()})
            lab.append(h["label_jsd"])
            txt.append(h["text_jsd"])
            if sizes is None:
                sizes = [len(s.train) + len(s.val) for s in part.sites.values()]
        name = method + (f" a={kw['alpha']}" if kw else "")
        rows[name] = (np.mean(lab), np.mean(txt))
        print(f"{name:<18} {np.mean(lab):>10.4f} {np.mean(txt):>9.4f} {np.mean(secs):>8.2f}  {sizes}")
    r, c = rows["random"], rows["cluster"]
    print(f"cluster / random: labels x{c[0] / r[0]:.1f}, text x{c[1] / r[1]:.1f}")


if __name__ == "__main__":
    main()
