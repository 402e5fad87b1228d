"""A site's share of a task: which samples it trains, validates and tests on, and the heterogeneity of the split.

All sites read the same data root (a simulated federation from one copy of a public data set) and take their own
share deterministically from ``seed``; in a real federation give each site its own folder and ``num_sites`` 1.

- ``retina``: RetinaMNIST ``train`` spread over sites with Dirichlet(``dirichlet_alpha``) label skew; test = the
  ``.npz``'s ``val`` split (the same at every site);
- ``melanoma``: HAM10000; 20 % of lesions held out as the common test set; the rest spread with Dirichlet label skew
  by ``lesion_id`` (all images of a lesion at one site, never across train / val / test);
- ``polyp``: Kvasir-SEG is one centre: images are clustered by colour statistics into 4 groups (largest first); the
  smallest is the *unseen* group (split ``unseen``), never trained on; with 3 sites group ``i`` is site ``i``
  (feature skew), otherwise the seen images are spread by hash;
- ``prostate``: MSD Task05 slices; cases spread over sites by hash, a case's slices stay together;
- ``synthetic_cls`` / ``synthetic_seg``: rendered images (marked synthetic), spread by hash; test = 200 more.

Each site keeps ``val_fraction`` of its groups for validation and ``data_fraction`` of the rest for training.
"""

from __future__ import annotations

from pathlib import Path

from fedmrg.errors import ConfigError, DataError
from fedmrg.vision.config import VisionConfig
from fedmrg.vision.data import (
    CLASS_NAMES,
    Sample,
    _group_hash,
    check_classes,
    colour_clusters,
    dirichlet_sites,
    read_ham10000,
    read_image_mask_folder,
    read_msd_task05,
    read_npz,
    split_train_val,
    subsample,
    synthetic_task,
)


def site_index(site_name: str, num_sites: int) -> int:
    """``site-3`` -> 2; ConfigError unless the name ends in a number 1..``num_sites``."""
    digits = ""
    for ch in reversed(site_name):
        if not ch.isdigit():
            break
        digits = ch + digits
    if not digits or not 1 <= int(digits) <= num_sites:
        raise ConfigError(
            f"site {site_name!r}: vision sites are named site-1..site-{num_sites} (`num_sites` "
            f"{num_sites}); rename the site or change `num_sites`"
        )
    return int(digits) - 1


POLYP_SEEN_GROUPS = 3


def polyp_groups(pool: list[Sample], seed: int) -> tuple[list[tuple[Sample, int]], list[Sample]]:
    """Kvasir-SEG colour groups: ``([(sample, group 0..2)], unseen samples)``; 4 k-means groups by colour
    statistics, largest first; the smallest is the unseen centre, never trained on by any method."""
    clusters = colour_clusters(pool, POLYP_SEEN_GROUPS + 1, seed)
    seen = [(s, c) for s, c in zip(pool, clusters, strict=True) if c < POLYP_SEEN_GROUPS]
    unseen = [s for s, c in zip(pool, clusters, strict=True) if c == POLYP_SEEN_GROUPS]
    return seen, unseen


def site_splits(cfg: VisionConfig, data_root: str, index: int) -> dict[str, list[Sample]]:
    """``{"train", "val", "test"[, "unseen"]}`` samples of site ``index`` (0-based)."""
    root = Path(data_root) if data_root else None
    n, seed = cfg.num_sites, cfg.seed
    if cfg.task.startswith("synthetic"):
        if root is not None:
            raise ConfigError(f"task {cfg.task} is synthetic: give no data root (got {data_root})")
        pool = synthetic_task(cfg.task, cfg.synthetic_samples, seed=seed)
        mine = [s for s in pool if _group_hash(s.group, seed) % n == index]
        test = synthetic_task(cfg.task, 200, seed=seed + 1000)
        return _finish(cfg, mine, test, None, f"synthetic task {cfg.task}")
    if root is None or not root.exists():
        raise ConfigError(
            f"task {cfg.task}: data root {data_root or '(none)'} does not exist; set the job's "
            f"data_root_template, $FEDMRG_DATA_ROOT or local/fedmrg_site.json, or use a synthetic task"
        )
    if cfg.task == "retina":
        pool = read_npz(root, "train")
        check_classes(pool, CLASS_NAMES["retina"], str(root))
        sites = dirichlet_sites(pool, n, cfg.dirichlet_alpha, seed) if n > 1 else [0] * len(pool)
        mine = [s for s, k in zip(pool, sites, strict=True) if k == index]
        return _finish(cfg, mine, read_npz(root, "val"), None, str(root))
    if cfg.task == "melanoma":
        pool = read_ham10000(root)
        check_classes(pool, CLASS_NAMES["melanoma"], str(root / "HAM10000_metadata.csv"))
        test = [s for s in pool if _group_hash(s.group, seed + 99) % 5 == 0]
        rest = [s for s in pool if _group_hash(s.group, seed + 99) % 5 != 0]
        sites = dirichlet_sites(rest, n, cfg.dirichlet_alpha, seed) if n > 1 else [0] * len(rest)
        mine = [s for s, k in zip(rest, sites, strict=True) if k == index]
        return _finish(cfg, mine, test, None, str(root))
    if cfg.task == "polyp":
        pool = read_image_mask_folder(root)
        seen, unseen = polyp_groups(pool, seed)
        if n == POLYP_SEEN_GROUPS:  # one colour group per site: feature skew between sites
            mine = [s for s, g in seen if g == index]
        else:
            mine = [s for s, _ in seen if _group_hash(s.group, seed) % n == index]
        return _finish(cfg, mine, None, unseen, str(root))
    if cfg.task == "prostate":
        pool = read_msd_task05(root)
        mine = [s for s in pool if _group_hash(s.group, seed) % n == index]
        return _finish(cfg, mine, None, None, str(root))
    raise ConfigError(f"unknown task {cfg.task!r}")


def _finish(
    cfg: VisionConfig, mine: list[Sample], test: list[Sample] | None, unseen: list[Sample] | None, source: str
) -> dict[str, list[Sample]]:
    train, val = split_train_val(mine, cfg.val_fraction, cfg.seed)
    train = subsample(train, cfg.data_fraction, cfg.seed)
    if not train or not val:
        raise DataError(
            f"{source}: this site's share has {len(train)} training and {len(val)} validation images; "
            f"use fewer sites or a larger data set"
        )
    out = {"train": train, "val": val, "test": test if test is not None else val}
    if unseen is not None:
        out["unseen"] = unseen
    return out
