"""Why the benchmark's calibrated models call findings on the unseen site's normal studies: device or label prior?

For each model folder (``--model``, repeatable; e.g. ``OUT/runs/cluster/fedmrg/seed0/model``) the diagnosis head
reads every study of the unseen site's ``test`` split (generic adapter, as the benchmark scores it) several ways, and
the in-domain test set:

- ``in-domain, <site>``: the in-domain test studies of one training site under its own device (does the head tell
  findings apart within one device?);
- ``own``: the unseen site's own device transform (what the benchmark scores);
- ``as <site>``: the same studies under a training site's device transform instead (same labels, same rendered
  images, only the device signature changes): if the head's calls move with the device, it reads the device;
- ``prior-adjusted``: ``own`` with the head's log-priors replaced by the unseen site's (Saerens et al. 2002's EM
  re-estimation from the head's own posteriors, no labels used): if the calls move to the truth, the gap was the
  label prior.

It prints, per model and reading, the rate of studies the head calls "No Finding" positive, the true rate, the head's
example-based F1 of positive states (the CE convention, on states; :func:`fedmrg.report.evaluation.diagnosis_f1`)
and the "No Finding" AUROC (scikit-learn), then the training sites' device profiles and "No Finding" rates.

    python scripts/probe_unseen_site.py --data DATA/cluster --model OUT/runs/cluster/fedmrg/seed0/model [...]

Cost on the 2-core machine: about 30 s of CPU per model on the clustered partition (no report is generated; the
encoder and head only); the stratified partition's unseen site is four times larger.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def head_posteriors(model, dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Softmax state posteriors (N, 14, 4) and reference states (N, 14) int of ``dataset`` under ``model``'s head."""
    probs, states = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([it["image"] for it in items])
        logits = model.diagnosis_head(model.encoder(images).pooled)
        probs.append(torch.softmax(logits.float(), dim=-1).numpy())
        states.append(np.array([list(it["states"]) for it in items]))
    return np.concatenate(probs), np.concatenate(states)


def em_prior_adjust(probs: np.ndarray, train_prior: np.ndarray, iters: int = 100) -> np.ndarray:
    """Saerens-Latinne-Decaestecker EM: posteriors (N, 14, 4) re-weighted to the test set's estimated priors.

    ``train_prior`` (14, 4) are the priors the head was fitted with. Written by hand: scikit-learn and MONAI have no
    label-shift EM; it is ten lines.
    """
    prior = train_prior.copy()
    adjusted = probs
    for _ in range(iters):
        weighted = probs * (prior / np.maximum(train_prior, 1e-12))[None]
        adjusted = weighted / weighted.sum(-1, keepdims=True)
        prior = adjusted.mean(0)
    return adjusted


def summary(probs: np.ndarray, states: np.ndarray) -> dict[str, float]:
    """NF-positive call rate, true NF rate, head example-based F1 (positive states), NF AUROC."""
    from sklearn.metrics import roc_auc_score

    from fedmrg.metrics.clinical import clinical_efficacy
    from fedmrg.observations import OBSERVATIONS, State

    pos, nf = int(State.POSITIVE), OBSERVATIONS.index("No Finding")
    pred = (probs.argmax(-1) == pos).astype(float)
    ref = (states == pos).astype(float)
    truth = ref[:, nf]
    auc = roc_auc_score(truth, probs[:, nf, pos]) if 0 < truth.sum() < len(truth) else float("nan")
    return {"called_nf": pred[:, nf].mean(), "true_nf": truth.mean(),
            "head_f1": clinical_efficacy(pred, ref)["example_based"]["f1"], "nf_auroc": auc}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a partition folder of `fedmrg bench prepare`")
    parser.add_argument("--model", type=Path, action="append", required=True, help="a model folder (repeatable)")
    parser.add_argument("--image-size", type=int, default=96, help="the profile's image size (full: 96)")
    args = parser.parse_args()

    from torch.utils.data import ConcatDataset

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.observations import OBSERVATIONS, State
    from fedmrg.report.data_loading import ReportDataset, open_split, states_for_records
    from fedmrg.report.export import load_model

    torch.set_num_threads(1)
    fd = FederatedDataset.open(args.data)
    site_states = {s: np.array(states_for_records(fd.split(s))) for s in fd.sites}  # (N_s, 14), labeler if unlabelled
    train_states = np.concatenate(list(site_states.values()))
    train_prior = np.stack([(train_states == k).mean(0) for k in range(4)], axis=-1)  # (14, 4): the LDA's n_k / N
    unseen_records = [r for u in fd.unseen_sites for r in fd.split(u, "test")]
    readings = {"own": ConcatDataset([open_split(fd, site=u, split="test", image_size=args.image_size)
                                      for u in fd.unseen_sites])}  # fmt: skip
    for site in fd.sites:
        readings[f"as {site}"] = ReportDataset(unseen_records, image_size=args.image_size,
                                               site_transform=fd.site_transform(site))  # fmt: skip
    in_domain = open_split(fd, site=None, split="test", image_size=args.image_size)
    per_site = {site: ReportDataset([r for r in fd.test() if r.meta.get("site") == site], image_size=args.image_size,
                                    site_transform=fd.site_transform(site)) for site in fd.sites}  # fmt: skip

    nf = OBSERVATIONS.index("No Finding")
    print("training sites: " + ", ".join(
        f"{s} ({fd.profile(s)}, No Finding {np.mean(st[:, nf] == int(State.POSITIVE)):.0%})"
        for s, st in site_states.items()))  # fmt: skip
    print("unseen sites: " + ", ".join(f"{u} ({fd.profile(u)})" for u in fd.unseen_sites))
    header = f"{'model':<48} {'reading':<18} {'called NF':>9} {'true NF':>8} {'head F1':>8} {'NF AUROC':>9}"
    print(header)
    for path in args.model:
        model = load_model(path, generic_only=True, require_site=False).model.eval()
        if model.diagnosis_head is None:
            print(f"{str(path):<48} no diagnosis head: skipped")
            continue
        rows = {"in-domain test": head_posteriors(model, in_domain)}
        rows |= {f"in-domain, {site}": head_posteriors(model, ds) for site, ds in per_site.items()}
        rows |= {name: head_posteriors(model, ds) for name, ds in readings.items()}
        rows["own, prior-adjusted"] = (em_prior_adjust(rows["own"][0], train_prior), rows["own"][1])
        for name, (probs, states) in rows.items():
            s = summary(probs, states)
            print(f"{str(path)[-48:]:<48} {name:<18} {s['called_nf']:>9.2f} {s['true_nf']:>8.2f} "
                  f"{s['head_f1']:>8.3f} {s['nf_auroc']:>9.3f}")  # fmt: skip


if __name__ == "__main__":
    from fedmrg.errors import FedMRGError

    try:
        main()
    except FedMRGError as e:  # a missing folder or an unreadable model: the message names it, no traceback
        raise SystemExit(f"probe_unseen_site.py: error: {e}") from None
