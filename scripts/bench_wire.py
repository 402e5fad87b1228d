"""Bytes on the wire per codec, side by side in one run: encoded bytes / float32 raw bytes of the shared state.

1. Offline (always): the FedMRG shared state of a run configuration (default: the packaged default.yaml at the demo's
   96 px), packed as the WEIGHT_DIFF DXO a site uploads and serialised with FOBS as FLARE does; for each codec the
   serialised bytes / the raw float32 bytes (4 bytes per value), and the relative L2 error of the decoded state.
2. ``--simulate``: ``nvflare simulator`` on a copy of ``--job`` (default jobs/toy, seconds per run) per codec, with
   :func:`fedmrg.fl.wire_codec.apply_wire_codec` (up: the codec; down: bfloat16 for 16- and 8-bit codecs); from the
   run summary (the server's byte meter, before decoding): bytes up and down per round / (sites x raw float32 bytes
   of the shared state), and the last round's validation metrics. ``--job jobs/fedmrg`` gives the demo's model and
   metrics (about 5 minutes per codec on 2 cores); ``--set`` passes ``fedmrg job variant`` overrides.

    .venv/bin/python scripts/bench_wire.py [--simulate] [--job jobs/toy] [--set rounds=2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext

from fedmrg.fl.wire_bytes_meter import serialized_size
from fedmrg.fl.wire_codec import CODECS, EIGHT_BIT, WireDecodeFilter, WireEncodeFilter, apply_wire_codec
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


def simulate(job: Path, codec: str, sets: list[str], threads: int, work: Path) -> dict:
    from fedmrg.job import prepare_workspace, simulator_command, write_variant

    variant = write_variant(job, work / f"job-{codec}", sets, overwrite=True)
    server_path = variant / "app" / "config" / "config_fed_server.json"
    client_path = variant / "app" / "config" / "config_fed_client.json"
    server, client = json.loads(server_path.read_text()), json.loads(client_path.read_text())
    server["workflows"] = server["workflows"][:1]  # rounds only: cross-site evaluation is not what is compared
    down = "float32" if codec == "float32" else ("bfloat16" if codec in EIGHT_BIT else codec)
    apply_wire_codec(server, client, up=codec, down=down)
    server_path.write_text(json.dumps(server, indent=2))
    client_path.write_text(json.dumps(client, indent=2))
    ws = work / f"ws-{codec}"
    prepare_workspace(variant, ws)
    sites = len(json.loads((variant / "meta.json").read_text()).get("deploy_map", {}).get("app", [])) or 2
    cmd = simulator_command(variant, ws, sites=sites, threads=threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"simulator failed for {codec}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    summary = json.loads((ws / "server" / "simulate_job" / "app_server" / "summary" / "summary.json").read_text())
    summary["_seconds"] = time.perf_counter() - t0
    summary["_down"] = down
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="run configuration for the offline table (default: packaged default.yaml)")
    ap.add_argument("--image-size", type=int, default=96, help="encoder image size (default 96, the demo's)")
    ap.add_argument("--simulate", action="store_true", help="also run the simulator once per codec")
    ap.add_argument("--job", type=Path, default=Path(REPO_ROOT) / "jobs" / "toy", help="job folder (default jobs/toy)")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="job variant override KEY=VALUE")
    ap.add_argument("--codecs", default=",".join(CODECS), help=f"comma-separated subset of {','.join(CODECS)}")
    ap.add_argument("--threads", type=int, default=2, help="simulator threads (default 2)")
    args = ap.parse_args()
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    bad = [c for c in codecs if c not in CODECS]
    if bad:
        sys.exit(f"--codecs: unknown {bad}; choose from {list(CODECS)}")

    print("\n".join(offline_table(fedmrg_shared_state(args.config, args.image_size))))
    if not args.simulate:
        return
    with tempfile.TemporaryDirectory(prefix="bench_wire_") as tmp:
        rows = []
        for codec in codecs:
            s = simulate(args.job, codec, args.sets, args.threads, Path(tmp))
            raw = s["shared_param_bytes"]
            rounds = s["rounds"]
            n_sites = [len(r["sites"]) for r in rounds]
            up = np.mean([r["bytes_up"] / (n * raw) for r, n in zip(rounds, n_sites, strict=True)])
            down = np.mean([r["bytes_down"] / (n * raw) for r, n in zip(rounds, n_sites, strict=True)])
            val = rounds[-1].get("val", {})
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(val.items()) if isinstance(v, (int, float)))
            rows.append(f"| {codec} / {s['_down']} | {up:.4f} | {down:.4f} | {s['_seconds']:.0f} | {metrics} |")
        print(
            f"\nsimulator: {args.job.name}, {len(rounds)} round(s), {raw:,} raw float32 bytes of shared state per site"
        )
        print("| up / down codec | bytes up per round / fp32 raw | bytes down / fp32 raw | wall s | last-round val |")
        print("|---|---:|---:|---:|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
