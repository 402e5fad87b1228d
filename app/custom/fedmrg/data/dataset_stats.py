"""Statistics and a figure of a federated dataset directory (``fedmrg data inspect``).

:func:`summarize` reads every split and returns per-part counts, mean report length, label prevalences and the
federation's heterogeneity (:mod:`fedmrg.data.heterogeneity`, computed over the training sites' train + val
studies); :func:`format_summary` renders it as text; :func:`plot_dataset` writes a PNG with each site's label
distribution and sample images after the site's device transform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedmrg.data.dataset_dir import FederatedDataset
from fedmrg.data.heterogeneity import heterogeneity, label_distribution
from fedmrg.data.records import StudyRecord
from fedmrg.observations import OBSERVATIONS

#: Short column names for the 14 observations, in OBSERVATIONS order.
SHORT_NAMES: tuple[str, ...] = (
    "EnlCM", "Cardio", "LOpac", "Lesion", "Edema", "Consol", "Pneum",
    "Atel", "PTX", "Effus", "PlOth", "Fract", "SupDv", "NoFnd",
)  # fmt: skip


def _part_stats(records: list[StudyRecord]) -> dict[str, Any]:
    labelled = [r for r in records if r.labels is not None]
    prevalence = {
        o: (sum(r.labels.get(o) == 1 for r in labelled if r.labels) / len(labelled)) if labelled else None
        for o in OBSERVATIONS
    }
    words = [len(r.report.split()) for r in records]
    return {
        "studies": len(records),
        "patients": len({r.patient_id for r in records}),
        "words_mean": float(np.mean(words)) if words else 0.0,
        "labelled": len(labelled),
        "prevalence": prevalence,
    }


def summarize(ds: FederatedDataset) -> dict[str, Any]:
    """Per-part statistics plus heterogeneity over the training sites (train + val pooled per site)."""
    parts: list[dict[str, Any]] = []
    pooled: dict[str, list[StudyRecord]] = {}
    for site in ds.sites:
        train, val = ds.split(site, "train"), ds.split(site, "val")
        pooled[site] = train + val
        parts.append(
            {"part": site, "kind": "site", "profile": ds.profile(site), "train": len(train), "val": len(val),
             "test": None, **_part_stats(train + val)}
        )  # fmt: skip
    test = ds.test()
    parts.append({"part": "test", "kind": "test", "profile": None, "train": None, "val": None, "test": len(test),
                  **_part_stats(test)})  # fmt: skip
    for site in ds.unseen_sites:
        recs = ds.split(site, "test")
        parts.append({"part": site, "kind": "unseen", "profile": ds.profile(site), "train": None, "val": None,
                      "test": len(recs), **_part_stats(recs)})  # fmt: skip
    m = ds.manifest
    return {
        "root": str(ds.root),
        "source": m.get("source", {}).get("name"),
        "partition": m.get("partition", {}),
        "synthetic": ds.synthetic,
        "label_source": m.get("label_source"),
        "skipped": m.get("skipped", {}),
        "parts": parts,
        "heterogeneity": heterogeneity(pooled),
    }


def _fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable tables of :func:`summarize`'s result."""
    p = summary["partition"]
    params = ", ".join(f"{k}={v}" for k, v in p.items() if k != "method")
    lines = [
        f"dataset {summary['root']}",
        f"source {summary['source']}, partition {p.get('method')} ({params}), synthetic={summary['synthetic']}, "
        f"labels from {summary['label_source']}",
    ]
    if summary["skipped"]:
        lines.append("skipped while reading: " + ", ".join(f"{k}: {v}" for k, v in summary["skipped"].items()))
    lines += ["", f"{'part':<14} {'profile':<13} {'train':>6} {'val':>5} {'test':>5} {'patients':>8} {'words':>6}"]
    for r in summary["parts"]:
        lines.append(
            f"{r['part']:<14} {_fmt(r['profile']):<13} {_fmt(r['train']):>6} {_fmt(r['val']):>5} "
            f"{_fmt(r['test']):>5} {r['patients']:>8} {r['words_mean']:>6.1f}"
        )
    lines += [
        "",
        "positive prevalence (% of labelled studies)",
        f"{'part':<14} " + " ".join(f"{s:>6}" for s in SHORT_NAMES),
    ]
    for r in summary["parts"]:
        vals = [r["prevalence"][o] for o in OBSERVATIONS]
        lines.append(f"{r['part']:<14} " + " ".join(f"{_fmt(None if v is None else 100 * v, '.1f'):>6}" for v in vals))
    h = summary["heterogeneity"]
    lines += [
        "",
        "heterogeneity between training sites (mean pairwise Jensen-Shannon divergence, bits, 0..1):",
        f"  labels (positive-mention distribution): {h['label_jsd']:.4f}",
        f"  text (unigram distribution):            {h['text_jsd']:.4f}",
    ]
    return "\n".join(lines)


def _sample_images(ds: FederatedDataset, site: str, split: str, k: int) -> list[np.ndarray]:
    """Up to ``k`` frontal images of the split, loaded and passed through the site's device transform, ``(H, W)``."""
    from fedmrg.data.images import load_image

    transform = ds.site_transform(site)
    out = []
    for r in ds.split(site, split):
        im = r.frontal_image()
        if im is None:
            continue
        img = load_image(im.path)[None]  # (1, H, W) float32 in [0, 1]
        out.append(np.asarray(transform(img))[0])
        if len(out) == k:
            break
    return out


def plot_dataset(ds: FederatedDataset, png: str | Path, *, samples_per_site: int = 3) -> Path:
    """Write a PNG: label distribution bars per site (top) and ``samples_per_site`` transformed images per site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [(s, "train") for s in ds.sites] + [(s, "test") for s in ds.unseen_sites]
    dists = [label_distribution(ds.split(s, sp)) for s, sp in sites]
    samples = [_sample_images(ds, s, sp, samples_per_site) for s, sp in sites]

    n_rows = max([len(x) for x in samples] + [0])  # sample images: one column per site, one row per sample
    fig = plt.figure(figsize=(max(10.0, 1.7 * len(sites)), 4.5 + 1.8 * n_rows))
    grid = fig.add_gridspec(1 + n_rows, len(sites), height_ratios=[4.5] + [1.8] * n_rows)
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / len(sites)
    x = np.arange(len(OBSERVATIONS))
    for i, ((site, _), d) in enumerate(zip(sites, dists, strict=True)):
        ax.bar(x + (i - (len(sites) - 1) / 2) * width, d, width, label=f"{site} ({ds.profile(site)})")
    ax.set_xticks(x, SHORT_NAMES, fontsize=8)
    ax.set_ylabel("share of positive mentions")
    h = heterogeneity({s: ds.split(s, "train") + ds.split(s, "val") for s in ds.sites})
    p = ds.manifest.get("partition", {})
    ax.set_title(
        f"{ds.manifest.get('source', {}).get('name')}: {p.get('method')} partition, {len(ds.sites)} training sites\n"
        f"mean pairwise JSD between training sites: labels {h['label_jsd']:.3f}, text {h['text_jsd']:.3f}",
        fontsize=10,
    )
    ax.legend(fontsize=8, ncol=min(len(sites), 3))
    for i, ((site, split), imgs) in enumerate(zip(sites, samples, strict=True)):
        for j in range(n_rows):
            a = fig.add_subplot(grid[1 + j, i])
            a.axis("off")
            if j < len(imgs):
                a.imshow(imgs[j], cmap="gray", vmin=0, vmax=1)
            if j == 0:
                a.set_title(f"{site}\n{ds.profile(site)}" + (" (unseen)" if split == "test" else ""), fontsize=8)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png
