"""Time the readers on the shared IU X-ray files (full CSVs and annotation.json), best of N runs.

.venv/bin/python scripts/bench_readers.py [--data ../shared/data/iu_xray] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from fedmrg.data.readers import read_source
from fedmrg.paths import shared_data_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "iu_xray")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases = [
        ("iu-kaggle", args.data, {"missing_images": "skip"}),
        ("iu-kaggle", args.data, {"missing_images": "keep"}),
        ("iu-kaggle", args.data, {"missing_images": "skip", "verify_images": True}),
        ("annotation-json", args.data / "annotation.json", {"missing_images": "keep"}),
    ]
    print(f"{'source':<16} {'options':<48} {'records':>7} {'skips':>6} {'best s':>7} {'median s':>8}")
    for name, path, options in cases:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = read_source(name, path, **options)
            times.append(time.perf_counter() - t0)
        best, median = min(times), statistics.median(times)
        print(
            f"{name:<16} {str(options):<48} {len(result.records):>7} {len(result.skipped):>6} {best:>7.3f}"
            f" {median:>8.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
