"""CPU cost of the image check of ``fedmrg data prepare`` (:func:`fedmrg.data.image_checks.image_problem`).

Writes smooth random images the size of IU X-ray PNGs (512 x 512) and of MIMIC-CXR-JPG files (2544 x 3056, JPEG
quality 95) to a temporary folder and prints the wall and CPU milliseconds per image (one process).

    .venv/bin/python scripts/bench_image_checks.py [--png 100] [--jpg 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fedmrg.data.image_checks import image_problem


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.integers(0, 255, (h // 16, w // 16)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png", type=int, default=100, help="512 x 512 PNGs to check")
    ap.add_argument("--jpg", type=int, default=10, help="2544 x 3056 JPEGs to check")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"png 512x512": [], "jpg 2544x3056": []}
        for i in range(args.png):
            p = Path(tmp) / f"p{i}.png"
            Image.fromarray(_smooth(rng, 512, 512)).save(p)
            sets["png 512x512"].append(p)
        for i in range(args.jpg):
            p = Path(tmp) / f"j{i}.jpg"
            Image.fromarray(_smooth(rng, 3056, 2544)).save(p, quality=95)
            sets["jpg 2544x3056"].append(p)
        for name, paths in sets.items():
            t, c = time.perf_counter(), time.process_time()
            problems = [image_problem(p) for p in paths]
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            assert not any(problems), problems
            n = max(1, len(paths))
            print(f"{name}: {len(paths)} images, {1000 * wall / n:.1f} ms wall, {1000 * cpu / n:.1f} ms CPU per image")


if __name__ == "__main__":
    main()
