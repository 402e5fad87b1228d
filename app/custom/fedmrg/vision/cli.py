"""``fedmrg vision``: run the vision system's FLARE job in the simulator, predict and evaluate with its model.

    fedmrg vision demo --task {retina,melanoma,polyp,prostate} [--data-root DIR] [--method M] --out D
    fedmrg vision predict --model D/model --images DIR --out OUT [--overlays]
    fedmrg vision evaluate --model D/model --data PATH --out metrics.json

``demo`` writes a job (``D/job``, from :func:`fedmrg.vision.job.write_job`), runs ``nvflare simulator`` on it
(workspace ``D/workspace``, log ``D/simulator.log``), copies the run summary (``D/summary.{json,md,png}``) and leaves
the final global model, loadable without FLARE, in ``D/model/``. Without ``--data-root`` the task's kind runs on a
small synthetic task (marked synthetic). For ``polyp`` with data, the unseen colour group is copied to ``D/unseen/``
and scored with the final model (``D/unseen_metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fedmrg.errors import ConfigError

TASKS = ("retina", "melanoma", "polyp", "prostate")
METHODS = ("prompt_gen", "vpt", "full_ft", "cnn", "local", "centralized")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vision",
        help="federated visual prompt generation (classification, segmentation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="vision_command", metavar="SUBCOMMAND")
    d = sub.add_parser("demo", help="run a vision task's job in the FLARE simulator; model in OUT/model")
    d.add_argument("--task", required=True, choices=TASKS)
    d.add_argument("--data-root", default="", help="the task's data folder (its own layout); none: synthetic task")
    d.add_argument("--method", default="prompt_gen", choices=METHODS)
    d.add_argument("--out", required=True, help="output folder (job, workspace, summary, model)")
    d.add_argument("--backbone", default="builtin", help="'builtin' or a local ViT / SAM folder (save_pretrained)")
    d.add_argument("--sites", type=int, default=3, help="training sites (centralized: 1)")
    d.add_argument("--rounds", type=int, default=None, help="federated rounds (default: the job's)")
    d.add_argument("--local-steps", type=int, default=None, help="optimizer steps per round (default: the job's)")
    d.add_argument("--data-fraction", type=float, default=1.0, help="share of training data per site (0.05 = 5 %%)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--eval-max-images", type=int, default=0, help="cap on images per evaluated split (0: all)")
    d.add_argument("--timeout", type=float, default=3600, help="seconds before the simulator is stopped")
    d.set_defaults(func=_demo)
    pr = sub.add_parser("predict", help="predict with a saved model (no FLARE)")
    pr.add_argument("--model", required=True, help="a model folder (D/model of a demo)")
    pr.add_argument("--images", required=True, help="folder of images")
    pr.add_argument("--out", required=True, help="output folder (predictions.csv or one mask PNG per image)")
    pr.add_argument("--overlays", action="store_true", help="segmentation: also OUT/overlays/<image>.png")
    pr.set_defaults(func=_predict)
    ev = sub.add_parser("evaluate", help="score a saved model on a labelled folder or .npz (no FLARE)")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", required=True, help="images/ + masks/ folder, image folder + labels.csv, or a .npz")
    ev.add_argument("--out", required=True, help="metrics JSON file")
    ev.add_argument("--max-images", type=int, default=0)
    ev.set_defaults(func=_evaluate)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def demo_learner_args(args: argparse.Namespace) -> dict:
    from fedmrg.vision.job import DEFAULT_ARGS

    seg = args.task in ("polyp", "prostate")
    base = dict(DEFAULT_ARGS["segmentation" if seg else "classification"])
    task = args.task if args.data_root else ("synthetic_seg" if seg else "synthetic_cls")
    sites = 1 if args.method == "centralized" else args.sites
    base.update(
        task=task,
        method=args.method,
        backbone=args.backbone,
        num_sites=sites,
        seed=args.seed,
        data_fraction=args.data_fraction,
        eval_max_images=args.eval_max_images,
    )
    if args.rounds:
        base["rounds"] = args.rounds
    if args.local_steps:
        base["local_steps"] = args.local_steps
    return base


def _demo(args: argparse.Namespace) -> int:
    from fedmrg.fl.state_files import load_state
    from fedmrg.job import simulator_command
    from fedmrg.vision.bundle import save_model_dir
    from fedmrg.vision.config import load_vision_config
    from fedmrg.vision.job import write_job

    out = Path(args.out).resolve()
    data_root = str(Path(args.data_root).resolve()) if args.data_root else ""
    if data_root and not Path(data_root).is_dir():
        raise ConfigError(f"--data-root {args.data_root}: not a folder")
    learner_args = demo_learner_args(args)
    cfg = load_vision_config(learner_args, source="fedmrg vision demo")
    if cfg.backbone == "builtin" and cfg.model_method != "cnn":
        from fedmrg.vision.backbones import builtin_backbone_dir

        builtin_backbone_dir()  # fail before the simulator starts
    for sub in ("job", "workspace", "model"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    job = write_job(out / "job", learner_args, data_root_template=data_root)
    ws = out / "workspace"
    cmd = simulator_command(job, ws, sites=cfg.num_sites)
    t0 = time.time()
    print(
        f"fedmrg vision demo: task {cfg.task}, method {cfg.method}, {cfg.num_sites} site(s), {cfg.rounds} rounds "
        f"x {cfg.local_steps} steps; log {out / 'simulator.log'}",
        flush=True,
    )
    with (out / "simulator.log").open("w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            print(f"simulator stopped after {args.timeout:.0f} s", file=sys.stderr)
            return 1
    app = ws / "server" / "simulate_job" / "app_server"
    model_file = app / "FL_global_model.safetensors"
    if rc != 0 or not model_file.is_file():
        print(f"simulator failed (exit {rc}); see {out / 'simulator.log'}", file=sys.stderr)
        return 1
    for name in ("summary.json", "summary.md", "summary.png"):
        if (app / "summary" / name).is_file():
            shutil.copy(app / "summary" / name, out / name)
    state, meta = load_state(model_file)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    save_model_dir(out / "model", cfg, state, extra={"round": meta.get("round"), "synthetic": not data_root})
    elapsed = time.time() - t0
    result = {"task": cfg.task, "method": cfg.method, "seconds": round(elapsed, 1), "model": str(out / "model")}
    if cfg.task == "polyp":
        result["unseen"] = _unseen(cfg, data_root, out)
    (out / "demo_result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(format_rounds(summary))
    print(json.dumps(result, indent=1))
    return 0


def _unseen(cfg, data_root: str, out: Path) -> dict:
    """Copy the unseen group of a polyp run to ``out/unseen`` and score the final model on it."""
    from fedmrg.vision.data import read_image_mask_folder
    from fedmrg.vision.inference import evaluate_path, write_json
    from fedmrg.vision.tasks import polyp_groups

    _, unseen = polyp_groups(read_image_mask_folder(data_root), cfg.seed)
    for sub in ("images", "masks"):
        (out / "unseen" / sub).mkdir(parents=True, exist_ok=True)
    for s in unseen:
        shutil.copy(s.image, out / "unseen" / "images" / Path(s.image).name)
        shutil.copy(s.mask, out / "unseen" / "masks" / Path(s.mask).name)
    res = evaluate_path(out / "model", out / "unseen")
    write_json(out / "unseen_metrics.json", res)
    return res["metrics"] | {"images": res["images"]}


def format_rounds(summary: dict) -> str:
    """A plain table of the rounds: weighted mean validation metrics of the received global model, and bytes."""
    rows = summary.get("rounds") or []
    if not rows:
        return "(no rounds in the summary)"
    lines = ["round  val of the received global model              bytes down + up"]
    for r in rows:
        val = r.get("val") or {}
        vals = " ".join(f"{k}={v:.3f}" for k, v in sorted(val.items()) if isinstance(v, (int, float)))
        lines.append(f"{r.get('round', '?'):>5}  {vals:<46} {(r.get('bytes_down') or 0) + (r.get('bytes_up') or 0)}")
    return "\n".join(lines)


def _predict(args: argparse.Namespace) -> int:
    from fedmrg.vision.inference import predict_folder

    print(json.dumps(predict_folder(args.model, args.images, args.out, overlays=args.overlays), indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fedmrg.vision.inference import evaluate_path, write_json

    res = evaluate_path(args.model, args.data, max_images=args.max_images)
    write_json(args.out, res)
    print(json.dumps(res, indent=1))
    return 0
