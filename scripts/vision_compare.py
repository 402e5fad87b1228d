"""One method-comparison table of the vision system: every method through the FLARE simulator, same rounds and seed.

Runs ``fedmrg vision demo --method M`` for each method (prompt generation, averaged static prompts, full fine-tuning,
CNN-FedAvg, local-only, centralized) with the same task, data, rounds, local steps, seed and data fraction, each under
``/usr/bin/time -v`` when it exists, then reads each run's ``summary.json`` / ``demo_result.json`` and writes one
table (``OUT/table.md``, ``OUT/table.json``, also printed):

- the final global model's test metric (mean over sites of the cross-site evaluation on each site's ``test`` split;
  ``local``: each site's own model on its own test split, averaged); polyp: also the unseen-centre Dice and HD95
  (``fedmrg vision evaluate`` on the held-out colour group; ``local``: mean of the three local models);
- bytes per round (down + up, all sites, as metered on the wire) and float32 bytes of the shared state per site and
  direction, and that relative to ``full_ft``;
- trained share (trained parameters / backbone parameters);
- rounds to 95 % of the final validation metric: the first round ``r`` whose received model (after ``r``
  aggregations) reaches 95 % of the value validated in the last round (weighted mean over sites);
- wall seconds of the run (simulator, model export, unseen evaluation) and peak resident memory of its largest
  process.

    .venv/bin/python scripts/vision_compare.py --task retina --data-root ../shared/data/medmnist \
        --rounds 6 --local-steps 10 --out /tmp/cmp/retina [--fraction 0.05] [--methods prompt_gen,vpt]

``--table-only`` runs nothing and builds ``OUT/table_partial.{md,json}`` from the method folders already in ``OUT``
(a method without a finished run is listed as not run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ("prompt_gen", "vpt", "full_ft", "cnn", "local", "centralized")
KEY_METRICS = {"classification": ("accuracy", "auc"), "segmentation": ("dice", "hd95")}


def rounds_to_fraction(values: list[float], fraction: float = 0.95) -> int | None:
    """First index ``r`` with ``values[r] >= fraction * values[-1]`` (higher is better); None for no values or a final
    value <= 0 (a model that learned nothing has no convergence round)."""
    if not values or values[-1] <= 0:
        return None
    target = fraction * values[-1]
    return next(r for r, v in enumerate(values) if v >= target)


def val_series(summary: dict[str, Any], metric: str) -> list[float]:
    """The weighted mean validation ``metric`` of the received model in each round of a run summary."""
    out = []
    for r in summary.get("rounds") or []:
        v = (r.get("val") or {}).get(metric)
        if isinstance(v, (int, float)):
            out.append(float(v))
    return out


def final_test(summary: dict[str, Any], metric: str, method: str) -> float | None:
    """Mean over sites of the final model's cross-site ``metric`` (``local``: each site's own model)."""
    vals = []
    for site, models in (summary.get("cross_site") or {}).items():
        key = site if method == "local" else "SRV_FL_global_model"
        v = (models.get(key) or {}).get(metric)
        if isinstance(v, (int, float)):
            vals.append(float(v))
    return sum(vals) / len(vals) if vals else None


def summarise(run_dir: Path, method: str, kind: str) -> dict[str, Any]:
    """One table row from a ``fedmrg vision demo`` output folder."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = summary.get("rounds") or []
    row: dict[str, Any] = {"method": method, "rounds": len(rounds)}
    for m in KEY_METRICS[kind]:
        row[m] = final_test(summary, m, method)
    for m in KEY_METRICS[kind][:1] + (("auc",) if kind == "classification" else ()):
        series = val_series(summary, m)
        row[f"val_{m}_series"] = [round(v, 4) for v in series]
        row[f"rounds_to_95_{m}"] = rounds_to_fraction(series)
    row["bytes_per_round"] = (sum((r.get("bytes_down") or 0) + (r.get("bytes_up") or 0) for r in rounds)
                              / len(rounds)) if rounds else None
    row["shared_bytes_per_site"] = summary.get("shared_param_bytes")
    shares = [r["train"]["trained_share"] for r in rounds if "trained_share" in (r.get("train") or {})]
    row["trained_share"] = shares[-1] if shares else None
    row["round_seconds"] = (summary.get("totals") or {}).get("seconds")
    res_file = run_dir / "demo_result.json"
    if res_file.is_file():
        row["unseen"] = json.loads(res_file.read_text()).get("unseen")
    return row


def local_unseen(run_dir: Path) -> dict[str, Any] | None:
    """``local``: mean unseen-centre metrics of the sites' own final models (the aggregate is never used)."""
    from fedmrg.fl.state_files import load_state
    from fedmrg.vision.bundle import save_model_dir
    from fedmrg.vision.config import load_vision_config
    from fedmrg.vision.inference import evaluate_path

    info = json.loads((run_dir / "model" / "vision_model.json").read_text())
    cfg = load_vision_config(info["config"], source=str(run_dir / "model" / "vision_model.json"))
    per = {}
    for f in sorted((run_dir / "workspace").glob("site-*/**/vision_local_model.safetensors")):
        site = f.relative_to(run_dir / "workspace").parts[0]
        state, _ = load_state(f)
        mdir = run_dir / f"model_{site}"
        save_model_dir(mdir, cfg, state, extra={"site": site, "local_only": True})
        per[site] = evaluate_path(mdir, run_dir / "unseen")["metrics"]
    if not per:
        return None
    keys = ("dice", "hd95")
    return {k: sum(p[k] for p in per.values()) / len(per) for k in keys} | {"per_site": per}


def run_method(args: argparse.Namespace, method: str, out: Path) -> tuple[float, float | None, int]:
    """Run one method's demo; ``(wall seconds, peak RSS GiB of the largest process or None, exit code)``."""
    cmd = [str(Path(sys.executable).parent / "fedmrg"), "vision", "demo", "--task", args.task, "--method", method,
           "--out", str(out), "--rounds", str(args.rounds), "--local-steps", str(args.local_steps),
           "--seed", str(args.seed), "--data-fraction", str(args.fraction), "--sites", str(args.sites),
           "--eval-max-images", str(args.eval_max_images), "--timeout", str(args.timeout)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if timer:
        cmd = [timer, "-v", "-o", str(out) + ".time.txt", *cmd]
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(str(out) + ".log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t0
    return wall, read_time_file(out)[1], rc


def read_time_file(out: Path) -> tuple[float | None, float | None]:
    """``(wall seconds, peak RSS GiB of the largest process)`` from ``OUT/<method>.time.txt`` (``time -v``)."""
    tfile = Path(str(out) + ".time.txt")
    if not tfile.is_file():
        return None, None
    text = tfile.read_text()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    rss = int(m.group(1)) / 2**20 if m else None
    w = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    wall = None
    if w:
        wall = 0.0
        for part in w.group(1).split(":"):
            wall = wall * 60 + float(part)
    return wall, rss


def fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def table_markdown(rows: list[dict[str, Any]], kind: str, header: str) -> str:
    """The comparison table as Markdown."""
    ft = next((r.get("shared_bytes_per_site") for r in rows if r["method"] == "full_ft"), None)
    m1, m2 = KEY_METRICS[kind]
    cols = [m1, m2] + (["unseen Dice", "unseen HD95"] if any(r.get("unseen") for r in rows) else [])
    cols += ["bytes/round (all sites, down+up)", "shared bytes/site/direction", "vs full_ft", "trained share",
             f"rounds to 95 % ({m1}" + (", auc)" if kind == "classification" else ")"), "wall s", "peak RSS GiB"]
    lines = [header, "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        if r.get("failed"):
            what = "not run" if r["exit"] == "not run" else f"failed (exit {r['exit']}); see {r['log']}"
            lines.append(f"| {r['method']} | {what} |" + " |" * (len(cols) - 1))
            continue
        cells = [fmt(r.get(m1)), fmt(r.get(m2))]
        if "unseen Dice" in cols:
            u = r.get("unseen") or {}
            cells += [fmt(u.get("dice")), fmt(u.get("hd95"), ".1f")]
        sb = r.get("shared_bytes_per_site")
        rel = "-" if not (ft and sb) else ("1.0x" if sb == ft else f"{ft / sb:.1f}x less")
        r95 = fmt(r.get(f"rounds_to_95_{m1}"), "d")
        if kind == "classification":
            r95 += " / " + fmt(r.get("rounds_to_95_auc"), "d")
        share = r.get("trained_share")
        cells += [fmt(r.get("bytes_per_round"), ",.0f"), fmt(sb, ",d"), rel,
                  "-" if share is None or r["method"] == "cnn" else f"{100 * share:.2f} %", r95,
                  fmt(r.get("wall_s"), ".0f"), fmt(r.get("peak_rss_gib"), ".2f")]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=("retina", "melanoma", "polyp", "prostate"))
    ap.add_argument("--data-root", default="", help="the task's data folder; none: the synthetic task of its kind")
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--local-steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=1.0, help="share of each site's training data (0.05 = 5 %%)")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--eval-max-images", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per method before its simulator is stopped")
    ap.add_argument("--out", required=True)
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: build the table from the method folders already in --out (missing: not run)")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    kind = "segmentation" if args.task in ("polyp", "prostate") else "classification"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for method in methods:
        if args.table_only:
            if not (out / method / "summary.json").is_file():
                rows.append({"method": method, "failed": True, "exit": "not run", "log": str(out / method)})
                continue
            (wall, rss), rc = read_time_file(out / method), 0
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {args.task} {method} ...", flush=True)
            wall, rss, rc = run_method(args, method, out / method)
        if rc != 0 or not (out / method / "summary.json").is_file():
            rows.append({"method": method, "failed": True, "exit": rc, "log": str(out / method) + ".log"})
            print(f"  failed (exit {rc}); see {out / method}.log", flush=True)
            continue
        row = summarise(out / method, method, kind)
        if method == "local" and args.task == "polyp" and args.data_root and (out / method / "unseen").is_dir():
            row["unseen"] = local_unseen(out / method)
        row.update(wall_s=wall, peak_rss_gib=rss)
        rows.append(row)
        print("  " + json.dumps({k: v for k, v in row.items() if not k.endswith("series")}), flush=True)
    header = (f"{args.task}: {args.rounds} rounds x {args.local_steps} local steps, seed {args.seed}, "
              f"data fraction {args.fraction}, {args.sites} sites (centralized: 1), "
              f"data {args.data_root or 'synthetic'}")
    md = table_markdown(rows, kind, header)
    name = "table_partial" if args.table_only else "table"
    (out / f"{name}.md").write_text(md)
    (out / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    print(md)
    return 0 if not any(r.get("failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
