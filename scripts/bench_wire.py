"""Bytes on the wire per codec, side by side in one run: encoded bytes / float32 raw bytes of the shared state.

1. Offline (always): the FedMRG shared state of a run configuration (default: the packaged default.yaml at the demo's
   96 px), packed as the WEIGHT_DIFF DXO a site uploads and serialised with FOBS as FLARE does; for each codec the
   serialised bytes / the raw float32 bytes (4 bytes per value), and the relative L2 error of the decoded state.
2. ``--simulate``: ``nvflare simulator`` on a copy of ``--job`` (default jobs/toy, seconds per run) per codec, with
   :func:`fedmrg.fl.wire_codec.apply_wire_codec` (up: the codec; down: bfloat16 for 16- and 8-bit codecs); from the
   run summary (the server's byte meter, before decoding): bytes up and down per round / (sites x raw float32 bytes
   of the shared state), and the last round's validation metrics. ``--job jobs/fedmrg`` gives the demo's model and
   metrics (about 5 minutes per codec on 2 cores); ``--set`` passes ``fedmrg job variant`` overrides.

    .venv/bin/python scripts/bench_wire.py [--simulate] [--job jobs/toy] [--set rounds=2] [--seeds 0,1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext

from fedmrg.fl.wire_bytes_meter import serialized_size
from fedmrg.fl.wire_codec import CODECS, EIGHT_BIT, WireDecodeFilter, WireEncodeFilter
from fedmrg.paths import REPO_ROOT


def fedmrg_shared_state(config: str | None, image_size: int) -> dict[str, np.ndarray]:
    """Float32 numpy arrays of the shared state of a freshly built FedMRG model (built-in models, random init)."""
    import torch

    from fedmrg.report.cli import _config_path
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.run_config import load_run_config
    from fedmrg.report.shared_state import get_shared_state

    cfg = load_run_config(_config_path(config), progress=False)
    cfg.model.encoder.image_size = image_size
    torch.manual_seed(0)
    model = FedMRGModel(cfg.model)
    return {k: v.detach().float().cpu().numpy() for k, v in get_shared_state(model).items()}


def offline_table(arrays: dict[str, np.ndarray]) -> list[str]:
    raw = sum(v.nbytes for v in arrays.values())
    fp32 = serialized_size(DXO(DataKind.WEIGHT_DIFF, data=arrays).to_shareable())
    ctx = FLContext()
    lines = [
        f"FedMRG shared state: {sum(v.size for v in arrays.values()):,} values in {len(arrays)} arrays, "
        f"{raw / 2**20:.2f} MiB raw float32; FOBS float32 DXO {fp32 / raw:.4f} x raw",
        "| codec | serialised / raw fp32 | serialised / serialised fp32 | rel. L2 error |",
        "|---|---:|---:|---:|",
    ]
    norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in arrays.values()))
    for codec in CODECS:
        shareable = DXO(DataKind.WEIGHT_DIFF, data=dict(arrays)).to_shareable()
        enc = WireEncodeFilter(codec).process(shareable, ctx)
        size = serialized_size(enc)
        dec = from_shareable(WireDecodeFilter().process(enc, ctx)).data
        err = np.sqrt(sum(float(((dec[k].astype(np.float64) - v) ** 2).sum()) for k, v in arrays.items())) / norm
        lines.append(f"| {codec} | {size / raw:.4f} | {size / fp32:.4f} | {err:.2e} |")
    return lines


def simulate(
    job: Path, codec: str, sets: list[str], threads: int | None, work: Path, tag: str, cross_site: bool = True
) -> dict:
    """One ``nvflare simulator`` run of a variant of ``job`` with ``codec`` up (down: see the module doc) on the job's
    training sites (``fedmrg.demo`` convention: the synthetic spec's ``sites``, else ``min_clients``); the run summary
    with ``_seconds`` and ``_down`` added."""
    from fedmrg.demo import _sites
    from fedmrg.job import prepare_workspace, simulator_command, write_variant

    down = "float32" if codec == "float32" else ("bfloat16" if codec in EIGHT_BIT else codec)
    variant = write_variant(job, work / f"job-{tag}", [*sets, f"wire.up={codec}", f"wire.down={down}"], overwrite=True)
    if not cross_site:
        path = variant / "app" / "config" / "config_fed_server.json"
        server = json.loads(path.read_text())
        server["workflows"] = [w for w in server["workflows"] if w["id"] != "cross_site_validate"]
        path.write_text(json.dumps(server, indent=2))
    ws = work / f"ws-{tag}"
    prepare_workspace(variant, ws)
    sites, _ = _sites(variant)
    cmd = simulator_command(variant, ws, sites=sites, threads=threads)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("NVFLARE_MAX_RUNNER_SYNC_TIMEOUT", "600")  # see bench_sites.SIM_ENV
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"simulator failed for {codec}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    summary = json.loads((ws / "server" / "simulate_job" / "app_server" / "summary" / "summary.json").read_text())
    summary["_seconds"] = time.perf_counter() - t0
    summary["_down"] = down
    summary["_sites"] = sites
    return summary


def final_metrics(summary: dict) -> dict[str, float]:
    """Metrics of the final global model: the mean over training sites of the cross-site evaluation when the job has
    one, else the last round's validation (the model after the next-to-last round)."""
    from fedmrg.demo import _final_global

    return _final_global(summary, summary["_sites"]) or summary["rounds"][-1].get("val", {})


def wire_ratios(rounds: list[dict], raw: int) -> tuple[float, float]:
    """Mean over rounds of (bytes up / (uploading sites x raw), bytes down / (sites sent the task x raw)); a site whose
    result missed the round (``bytes_up`` 0) is not counted up."""
    up = [r["bytes_up"] / (sum(s.get("bytes_up", 0) > 0 for s in r["sites"].values()) * raw) for r in rounds]
    down = [r["bytes_down"] / (sum(s.get("bytes_down", 0) > 0 for s in r["sites"].values()) * raw) for r in rounds]
    return float(np.mean(up)), float(np.mean(down))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="run configuration for the offline table (default: packaged default.yaml)")
    ap.add_argument("--image-size", type=int, default=96, help="encoder image size (default 96, the demo's)")
    ap.add_argument("--simulate", action="store_true", help="also run the simulator once per codec")
    ap.add_argument("--job", type=Path, default=Path(REPO_ROOT) / "jobs" / "toy", help="job folder (default jobs/toy)")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="job variant override KEY=VALUE")
    ap.add_argument("--codecs", default=",".join(CODECS), help=f"comma-separated subset of {','.join(CODECS)}")
    ap.add_argument("--threads", type=int, help="simulator client processes, -t (default: one per site)")
    ap.add_argument(
        "--seeds",
        default="0",
        help="comma-separated training seeds of the float32 runs (its spread); "
        "other codecs run with the first (default 0)",
    )
    ap.add_argument(
        "--every-seed",
        action="store_true",
        help="every codec runs every seed (paired by seed, run seed by seed), not only the float32 runs",
    )
    ap.add_argument(
        "--no-seed-key",
        dest="seed_key",
        action="store_false",
        help="do not set learner.overrides.training.seed (jobs whose learner has no run configuration)",
    )
    ap.add_argument(
        "--no-cross-site",
        dest="cross_site",
        action="store_false",
        help="drop the cross-site evaluation; the metrics are then the last round's validation",
    )
    ap.add_argument("--keep", type=Path, help="also write each run's summary.json here")
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    bad = [c for c in codecs if c not in CODECS]
    if bad:
        sys.exit(f"--codecs: unknown {bad}; choose from {list(CODECS)}")

    print("\n".join(offline_table(fedmrg_shared_state(args.config, args.image_size))))
    if not args.simulate:
        return
    if args.every_seed:
        runs = [(c, seed) for seed in seeds for c in codecs]
    else:
        runs = [(c, seeds[0]) for c in codecs if c != "float32"]
        runs = [("float32", seed) for seed in seeds] * ("float32" in codecs) + runs
    keys = ("bleu4", "ce_f1", "personalized_bleu4", "personalized_ce_f1")
    with tempfile.TemporaryDirectory(prefix="bench_wire_") as tmp:
        rows = []
        for codec, seed in runs:
            sets = [*args.sets, f"learner.overrides.training.seed={seed}"] if args.seed_key else list(args.sets)
            s = simulate(args.job, codec, sets, args.threads, Path(tmp), f"{codec}-{seed}", args.cross_site)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / f"summary-{codec}-{seed}.json").write_text(json.dumps(s, indent=2))
            raw = s["shared_param_bytes"]
            rounds = s["rounds"]
            up, down = wire_ratios(rounds, raw)
            final = final_metrics(s)
            metrics = " | ".join("-" if final.get(k) is None else f"{final[k]:.4f}" for k in keys)
            rows.append(
                f"| {codec} / {s['_down']} | {seed} | {up:.4f} | {down:.4f} | {s['_seconds']:.0f} | {metrics} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
        print(
            f"\nsimulator: {args.job.name} {' '.join(args.sets)}, {len(rounds)} round(s), sites {s['_sites']}, "
            f"{raw:,} raw float32 bytes of shared state per site; metrics: "
            + (
                "the final global model, mean over the training sites of the cross-site evaluation"
                if args.cross_site
                else f"the last round's validation (the global model after {len(rounds) - 1} rounds), sample-weighted "
                "mean over the sites"
            )
        )
        print(
            "| up / down codec | seed | bytes up per round / fp32 raw | bytes down / fp32 raw | wall s "
            "| BLEU-4 | CE-F1 | personalized BLEU-4 | personalized CE-F1 |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
