"""Benchmark the synthetic chest radiograph renderer: signal, speed and a contact sheet.

1. Signal: a tiny CNN trained on rendered images predicts each finding on held-out renders (AUC per finding).
2. Speed: time to generate a synthetic multi-site set (render + PNG + report) with ``make_synthetic_studies``.
3. Contact sheet: one row per finding (positive on 4 seeds, then uncertain), written to ``--out``.

Example::

    .venv/bin/python scripts/bench_renderer.py --out /tmp/renderer_sheet.png
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fedmrg.data.synthetic import make_synthetic_studies, render_study_image
from fedmrg.data.synthetic.signal_check import renderer_auc
from fedmrg.observations import OBSERVATIONS


def contact_sheet(path: Path, *, size: int, seeds: int = 4) -> None:
    """Rows: No Finding, then each finding positive on ``seeds`` seeds and uncertain on the last column."""
    rows = []
    for name in ["No Finding", *[o for o in OBSERVATIONS if o != "No Finding"]]:
        tiles = []
        for s in range(seeds + 1):
            labels = {} if name == "No Finding" else {name: 1 if s < seeds else -1}
            tiles.append(render_study_image(labels, seed=1000 + s % seeds, size=size))
        row = Image.fromarray(np.concatenate(tiles, axis=1)).convert("RGB")
        ImageDraw.Draw(row).text((4, 4), name + "  (last: uncertain)", fill=(255, 255, 0))
        rows.append(np.asarray(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("renderer_sheet.png"), help="contact sheet PNG")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=600)
    p.add_argument("--cnn-size", type=int, default=64, help="render size for the classifier")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-studies", type=int, default=2000, help="studies in the timed synthetic set")
    p.add_argument("--n-sites", type=int, default=5)
    p.add_argument("--size", type=int, default=224, help="image size of the timed set and the contact sheet")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--skip-auc", action="store_true")
    args = p.parse_args()

    contact_sheet(args.out, size=args.size)
    print(f"contact sheet: {args.out}")

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        recs = make_synthetic_studies(
            args.n_studies,
            n_styles=args.n_sites,
            seed=0,
            image_dir=Path(tmp) / "images",
            image_size=args.size,
            workers=args.workers,
            progress=False,
        )
        wall = time.perf_counter() - t0
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time() - c0 + (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
        n_png = len(list((Path(tmp) / "images").glob("*.png")))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"synthetic set: {len(recs)} studies ({n_png} PNGs, {args.size} px, {args.n_sites} styles, "
        f"{args.workers} workers) in {wall:.1f} s wall = {1e3 * wall / len(recs):.1f} ms/study "
        f"(CPU {cpu:.1f} s summed over processes; 1-min load average {load:.1f} on {os.cpu_count()} cores)"
    )

    if not args.skip_auc:
        r = renderer_auc(n_train=args.n_train, n_test=args.n_test, size=args.cnn_size, epochs=args.epochs)
        print(
            f"tiny CNN, {args.n_train} train / {args.n_test} test renders at {args.cnn_size} px, {args.epochs} "
            f"epochs (render {r.render_s:.1f} s, train {r.train_s:.1f} s). AUC on held-out renders "
            "(positives vs absent; uncertain left out):"
        )
        for name in OBSERVATIONS:
            print(f"  {name:28s} AUC {r.auc[name]:.3f}  (test positives {r.n_pos_test[name]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
