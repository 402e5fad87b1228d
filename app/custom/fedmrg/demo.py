"""``fedmrg demo``: the default end-to-end run on data FedMRG generates itself (nothing downloaded).

Today it runs the data and evaluation pipeline: a synthetic 3-site federation with a distinct reporting style and
imaging device per site (plus one unseen site), its statistics and overview figure, and the "most frequent report"
baseline scored with the text and clinical-efficacy metrics — the floor every trained model must beat.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the default demo on generated data (no downloads)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--sites", type=int, default=3, help="training sites (default 3)")
    p.add_argument("--num-studies", type=int, default=600, help="synthetic studies in all (default 600)")
    p.add_argument("--image-size", type=int, default=128, help="side of generated images in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace the demo's dataset if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmrg.cli import main as fedmrg_main
    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.metrics import evaluate_reports
    from fedmrg.metrics.baselines import most_frequent_report
    from fedmrg.metrics.cli import format_table

    out: Path = args.out
    data_dir = out / "data"
    if not (data_dir / "manifest.json").is_file() or args.overwrite:
        print(f"[1/3] generating a synthetic {args.sites}-site federation in {data_dir}", file=sys.stderr)
        rc = fedmrg_main(
            ["data", "prepare", "--source", "synthetic", "--num-studies", str(args.num_studies),
             "--sites", str(args.sites), "--unseen-sites", "1", "--partition", "style",
             "--image-size", str(args.image_size), "--seed", str(args.seed), "--out", str(data_dir)]
            + (["--overwrite"] if args.overwrite else [])
        )  # fmt: skip
        if rc:
            return rc
    else:
        print(f"[1/3] reusing the dataset in {data_dir} (--overwrite to regenerate)", file=sys.stderr)

    print("[2/3] dataset statistics and overview figure", file=sys.stderr)
    png = out / "data_overview.png"
    rc = fedmrg_main(["data", "inspect", str(data_dir), "--png", str(png)])
    if rc:
        return rc

    print("[3/3] scoring the most-frequent-report baseline on each site's validation split", file=sys.stderr)
    ds = FederatedDataset.open(data_dir)
    results: dict[str, dict] = {}
    for site in ds.sites:
        baseline = most_frequent_report(r.report for r in ds.split(site, "train"))
        refs = {r.study_id: r.report for r in ds.split(site, "val")}
        results[site] = evaluate_reports({k: baseline for k in refs}, refs, meteor=False)
        print(f"\n{site}: most frequent training report on {len(refs)} validation studies", file=sys.stderr)
        print(format_table(results[site]))
    metrics_path = out / "baseline_metrics.json"
    metrics_path.write_text(json.dumps(results, indent=2))
    print(f"\ndataset: {data_dir}\noverview figure: {png}\nbaseline metrics: {metrics_path}")
    return 0
