"""Where findings get lost: pixels, diagnosis head, or decoder. One table per observation.

Columns (per CheXpert observation, positives only; F1 of "positive" against the reference, uncertain = not positive):

- ``pixel``: a plain MONAI image classifier trained from scratch on the same images (train split of every training
  site pooled, same image size, same 14 x 4 state cross-entropy as the diagnosis head) and scored on the evaluation
  split: what the pixels allow a small CNN to learn with this budget, the reference for the diagnosis head.
- ``probeN`` (``--probe DIR``): a linear head on the *frozen* pooled features of a Hugging Face ResNet folder (e.g.
  the built-in encoder at random init vs ``builtin-ssl``): what an encoder's start offers the diagnosis head.
- ``head``: the FedMRG run's diagnosis head (argmax state = positive) on the same studies.
- ``oracle``: CE-F1 of the reports the run writes when prompted with the *ground-truth* states (decoder ceiling).
- ``report``: CE-F1 of the reports it actually writes (head states in the prompt).

``head`` / ``oracle`` / ``report`` need ``--checkpoint`` (a `fedmrg train` run folder, or a FLARE run converted to
one); without it only ``pixel`` is computed. The last row is the example-based mean (PromptMRG's CE-F1); the
footer gives distinct reports, the most frequent one's share, reports containing "xxxx", and the
most-frequent-training-report baseline.

    python scripts/diagnose_findings.py --data DATA [--checkpoint RUN] [--split test] [--steps 300] [--threads 2]

Cost on a 2-core CPU: the pixel classifier runs about ``steps x batch`` images through a small DenseNet (``--arch``),
generation runs the evaluation split twice. ``--limit`` caps the evaluation studies, ``--steps 0`` skips the pixel
classifier, ``--no-reports`` skips generation.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmrg.observations import NUM_OBSERVATIONS, OBSERVATIONS, State
from fedmrg.report.diagnosis import NUM_STATES

ARCHS = ("densenet-small", "densenet121", "resnet10")
POS = int(State.POSITIVE)


def build_classifier(arch: str) -> nn.Module:
    """A MONAI 2D classifier: (B, 3, S, S) -> (B, 14 * 4) logits, random init."""
    from monai.networks.nets import DenseNet, DenseNet121, ResNet

    out = NUM_OBSERVATIONS * NUM_STATES
    if arch == "densenet121":
        return DenseNet121(spatial_dims=2, in_channels=3, out_channels=out)
    if arch == "densenet-small":
        return DenseNet(
            spatial_dims=2, in_channels=3, out_channels=out, init_features=32, growth_rate=16, block_config=(3, 4, 6, 4)
        )
    if arch == "resnet10":
        return ResNet(
            block="basic", layers=[1, 1, 1, 1], block_inplanes=[32, 64, 128, 256], spatial_dims=2,
            n_input_channels=3, num_classes=out,
        )  # fmt: skip
    raise SystemExit(f"--arch must be one of {ARCHS}, got {arch!r}")


def stack_split(dataset: Any, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N, 3, S, S) float32 and states (N, 14) int64 of a dataset of ReportDataset samples."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    samples = [dataset[i] for i in range(n)]
    return torch.stack([s["image"] for s in samples]), torch.tensor([list(s["states"]) for s in samples])


def per_observation_f1(pred_pos: np.ndarray, ref_pos: np.ndarray) -> dict[str, Any]:
    """Per-observation F1 and the example-based F1 (CE convention) of (N, 14) 0/1 positive matrices."""
    from fedmrg.metrics.clinical import clinical_efficacy

    ce = clinical_efficacy(pred_pos.astype(float), ref_pos.astype(float))
    return {
        "per_observation": {k: v["f1"] for k, v in ce["per_observation"].items()},
        "example_f1": ce["example_based"]["f1"],
        "n_predicted_positive": {k: v["n_predicted_positive"] for k, v in ce["per_observation"].items()},
    }


def train_pixel_classifier(
    train_x: torch.Tensor, train_s: torch.Tensor, eval_x: torch.Tensor, eval_s: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """Train ``args.arch`` for ``args.steps`` AdamW steps on the states and score positives on the eval images."""
    torch.manual_seed(args.seed)
    net = build_classifier(args.arch).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    t0, net_loss = time.perf_counter(), float("nan")
    net.train()
    for step in range(args.steps):
        idx = torch.randint(len(train_x), (args.batch_size,), generator=gen)
        x = train_x[idx].contiguous(memory_format=torch.channels_last)
        logits = net(x).view(-1, NUM_OBSERVATIONS, NUM_STATES)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), train_s[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        net_loss = 0.9 * net_loss + 0.1 * loss.item() if step else loss.item()
        if args.progress and (step + 1) % max(1, args.steps // 10) == 0:
            print(f"  pixel classifier step {step + 1}/{args.steps}: loss {net_loss:.3f}", flush=True)
    train_s_per_step = (time.perf_counter() - t0) / max(1, args.steps)
    net.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(eval_x), 64):
            preds.append(net(eval_x[i : i + 64]).view(-1, NUM_OBSERVATIONS, NUM_STATES).argmax(-1))
    pred = torch.cat(preds).numpy() == POS
    out = per_observation_f1(pred, eval_s.numpy() == POS)
    out |= {"arch": args.arch, "steps": args.steps, "batch_size": args.batch_size, "s_per_step": train_s_per_step,
            "final_train_loss": net_loss, "parameters": sum(p.numel() for p in net.parameters())}  # fmt: skip
    return out


def probe_encoder(
    path: str,
    train_x: torch.Tensor,
    train_s: torch.Tensor,
    eval_x: torch.Tensor,
    eval_s: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Linear probe: a 14 x 4 linear head on the frozen pooled features of the HF ResNet at ``path``."""
    from transformers import ResNetModel

    enc = ResNetModel.from_pretrained(path).eval()

    def feats(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([enc(pixel_values=x[i : i + 64]).pooler_output.flatten(1) for i in range(0, len(x), 64)])

    t0 = time.perf_counter()
    ftr, fev = feats(train_x), feats(eval_x)
    mean, std = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fev = (ftr - mean) / std, (fev - mean) / std
    torch.manual_seed(args.seed)
    head = nn.Linear(ftr.shape[1], NUM_OBSERVATIONS * NUM_STATES)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(args.probe_steps):  # full batch: the features are small
        loss = nn.functional.cross_entropy(head(ftr).view(-1, NUM_STATES), train_s.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(fev).view(-1, NUM_OBSERVATIONS, NUM_STATES).argmax(-1).numpy() == POS
    out = per_observation_f1(pred, eval_s.numpy() == POS)
    return out | {"path": path, "final_train_loss": loss.item(), "seconds": time.perf_counter() - t0}


def mesh_agreement(rows: list[dict[str, Any]], mesh: dict[str, list[str]]) -> dict[str, Any] | None:
    """Micro P/R/F1 of the written reports' labels against IU's human MeSH indexing, over the observations
    :data:`~fedmrg.labels.mesh_eval.MESH_REFERENCE` maps (studies indexed "No Indexing" or without MeSH are left
    out). A reference that is not the labeler: it checks that a CE-F1 gain is not agreement with the labeler alone."""
    from fedmrg.labels import label_reports
    from fedmrg.labels.mesh_eval import NOT_INDEXED, score_against_mesh

    kept = [r for r in rows if mesh.get(r["study_id"]) and mesh[r["study_id"]] != [NOT_INDEXED]]
    if not kept:
        return None
    scores = score_against_mesh(label_reports([r["prediction"] for r in kept]),
                                [";".join(mesh[r["study_id"]]) for r in kept])  # fmt: skip
    tp = sum(x.true_positives for x in scores)
    pred, true = sum(x.predicted for x in scores), sum(x.support for x in scores)
    p, r = (tp / pred if pred else 0.0), (tp / true if true else 0.0)
    return {"n": len(kept), "observations": len(scores), "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0}  # fmt: skip


def report_columns(
    args: argparse.Namespace, dataset: Any, train_reports: list[str], mesh: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """Head F1, oracle-state report CE-F1 and report CE-F1 of a run on ``dataset`` (``mesh``: study id -> IU MeSH
    terms, for :func:`mesh_agreement`)."""
    from fedmrg.report.checkpoint import load_run
    from fedmrg.report.evaluation import generate_for_dataset, most_frequent_baseline, score_rows

    loaded = load_run(args.checkpoint, site=args.site, generic_only=args.generic_only)
    generic_only = loaded.adapter == "generic"
    out: dict[str, Any] = {"adapter": loaded.adapter}
    kinds = ("report",) if args.no_reports else ("report", "oracle")
    extra = {"max_new_tokens": 1} if args.no_reports else {}  # the head's states only
    rows_by_kind = {}
    for kind in kinds:
        t0 = time.perf_counter()
        rows = generate_for_dataset(
            loaded.model, dataset, batch_size=args.eval_batch_size, generic_only=generic_only,
            progress=args.progress, oracle_states=kind == "oracle", **extra,
        )  # fmt: skip
        rows_by_kind[kind] = rows
        out[f"{kind}_generation_s"] = time.perf_counter() - t0
    rows = rows_by_kind["report"]
    positive = "positive"
    head_pred = np.array([[r["states"][o]["state"] == positive for o in OBSERVATIONS] for r in rows])
    ref = np.array([[s == positive for s in r["reference_states"]] for r in rows])
    out["head"] = per_observation_f1(head_pred, ref)
    if args.no_reports:
        return out
    for kind, kind_rows in rows_by_kind.items():
        scored = score_rows(kind_rows)
        ce = scored["clinical"]
        reports = [r["prediction"] for r in kind_rows]
        counts = Counter(reports)
        out[kind] = {
            "per_observation": {k: v["f1"] for k, v in ce["per_observation"].items()},
            "example_f1": ce["example_based"]["f1"],
            "bleu4": float(scored["text"]["BLEU_4"]),
            "distinct_reports": len(counts),
            "most_frequent_share": counts.most_common(1)[0][1] / len(reports),
            "xxxx_reports": sum(1 for r in reports if re.search(r"x{3,}", r.lower())),
        }
        if mesh:
            out[kind]["mesh"] = mesh_agreement(kind_rows, mesh)
    base = most_frequent_baseline(train_reports, rows)
    out["most_frequent_train_report"] = {
        "report": base["report"], "example_f1": base["clinical"]["example_based"]["f1"],
        "bleu4": float(base["text"]["BLEU_4"]),
    }  # fmt: skip
    if args.predictions:
        from fedmrg.report.evaluation import write_predictions

        for kind, kind_rows in rows_by_kind.items():
            write_predictions(kind_rows, Path(args.predictions) / f"{kind}.jsonl")
    return out


def markdown(result: dict[str, Any]) -> str:
    """The per-observation table plus a footer."""
    cols = [c for c in ("pixel", *sorted(k for k in result if k.startswith("probe")), "head", "oracle", "report")
            if c in result]  # fmt: skip
    n_pos = result["n_reference_positive"]
    lines = ["| observation | n pos (eval) | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for obs in OBSERVATIONS:
        vals = " | ".join(f"{result[c]['per_observation'][obs]:.3f}" for c in cols)
        lines.append(f"| {obs} | {n_pos[obs]} | {vals} |")
    vals = " | ".join(f"**{result[c]['example_f1']:.3f}**" for c in cols)
    lines.append(f"| example-based F1 | {result['n_eval']} studies | {vals} |")
    foot = []
    if "pixel" in result:
        p = result["pixel"]
        foot.append(f"pixel: {p['arch']} ({p['parameters'] / 1e6:.2f} M params), {p['steps']} steps x {p['batch_size']}"
                    f", {p['s_per_step']:.2f} s/step, final train loss {p['final_train_loss']:.3f}")  # fmt: skip
    for key in sorted(k for k in result if k.startswith("probe")):
        foot.append(
            f"{key}: linear probe on frozen {result[key]['path']}, train loss {result[key]['final_train_loss']:.3f}"
        )
    for kind in ("report", "oracle"):
        if kind in result:
            r = result[kind]
            foot.append(f"{kind}: BLEU-4 {r['bleu4']:.3f}, {r['distinct_reports']} distinct reports / "
                        f"{result['n_eval']}, most frequent {r['most_frequent_share']:.0%}, "
                        f"{r['xxxx_reports']} with 'xxxx'")  # fmt: skip
            if r.get("mesh"):
                m = r["mesh"]
                foot.append(f"{kind} vs IU MeSH indexing ({m['n']} studies, {m['observations']} observations, micro): "
                            f"P {m['precision']:.3f}, R {m['recall']:.3f}, F1 {m['f1']:.3f}")  # fmt: skip
    if "most_frequent_train_report" in result:
        b = result["most_frequent_train_report"]
        foot.append(f"most frequent training report: CE-F1 {b['example_f1']:.3f}, BLEU-4 {b['bleu4']:.3f}")
    return "\n".join(lines + [""] + [f"- {f}" for f in foot])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="federated dataset directory (fedmrg data prepare)")
    ap.add_argument("--checkpoint", type=Path, help="run folder (fedmrg train); omit for the pixel column only")
    ap.add_argument("--split", default="test", choices=("val", "test"), help="evaluation split (default test)")
    ap.add_argument("--site", help="evaluation site (default: the in-domain test set / every site's val split)")
    ap.add_argument("--generic-only", action="store_true", help="generate with the generic adapter G alone")
    ap.add_argument("--image-size", type=int, help="pixel classifier image size (default: the run's, else 96)")
    ap.add_argument("--arch", default="densenet-small", choices=ARCHS, help="pixel classifier (default densenet-small)")
    ap.add_argument("--steps", type=int, default=300, help="pixel classifier steps; 0 skips it (default 300)")
    ap.add_argument("--batch-size", type=int, default=32, help="pixel classifier batch (default 32)")
    ap.add_argument("--lr", type=float, default=3e-3, help="pixel classifier peak learning rate (default 3e-3)")
    ap.add_argument("--probe", action="append", help="HF ResNet folder: add a linear-probe column on its frozen "
                    "features (repeatable; e.g. the built-in encoder, random vs builtin-ssl)")  # fmt: skip
    ap.add_argument("--probe-steps", type=int, default=300, help="full-batch AdamW steps of each probe (default 300)")
    ap.add_argument("--eval-batch-size", type=int, default=32, help="generation batch (default 32)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N studies of the split")
    ap.add_argument("--no-reports", action="store_true", help="head F1 only: skip writing reports")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the result JSON here")
    ap.add_argument("--predictions", type=Path, help="folder for report.jsonl / oracle.jsonl")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps <= 0 and args.checkpoint is None and not args.probe:
        raise SystemExit("nothing to do: --steps 0, no --probe and no --checkpoint")

    from torch.utils.data import Subset

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.report.data_loading import dataset_records, open_split

    size = args.image_size
    if size is None and args.checkpoint is not None:
        from fedmrg.report.run_config import load_run_config

        size = load_run_config(args.checkpoint / "config.yaml", progress=False).model.encoder.image_size
    size = size or 96
    data = FederatedDataset.open(args.data)
    train = open_split(data, site=None, split="train", image_size=size)
    evaluation = open_split(data, site=args.site, split=args.split, image_size=size)
    if args.limit:
        evaluation = Subset(evaluation, range(min(args.limit, len(evaluation))))
    eval_x, eval_s = stack_split(evaluation)
    ref = eval_s.numpy() == POS
    result: dict[str, Any] = {
        "data": str(args.data), "split": args.split, "site": args.site, "image_size": size, "n_eval": len(eval_s),
        "n_train": len(train), "n_reference_positive": dict(zip(OBSERVATIONS, ref.sum(0).tolist(), strict=True)),
    }  # fmt: skip
    if args.steps > 0 or args.probe:
        t0 = time.perf_counter()
        train_x, train_s = stack_split(train)
        print(f"{len(train_x)} training images ({time.perf_counter() - t0:.0f} s to load)", flush=True)
        for i, path in enumerate(args.probe or []):
            result[f"probe{i}"] = probe_encoder(path, train_x, train_s, eval_x, eval_s, args)
            print(f"probe {path}: example F1 {result[f'probe{i}']['example_f1']:.3f}", flush=True)
        if args.steps > 0:
            result["pixel"] = train_pixel_classifier(train_x, train_s, eval_x, eval_s, args)
        del train_x
    if args.checkpoint is not None:
        train_reports = [r.report for r in dataset_records(train)]
        full = open_split(data, site=args.site, split=args.split, image_size=size)
        mesh = {r.study_id: list(r.meta["mesh"]) for r in dataset_records(full) if r.meta.get("mesh")}
        result |= report_columns(args, evaluation, train_reports, mesh)
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
